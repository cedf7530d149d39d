/* The floor for efird's doorbell path, measured in the same run as efird itself:
 * a client writes a request into shared memory and kicks an eventfd; a server process
 * blocked on that eventfd answers in shared memory; the client spins until it sees the
 * answer. Prints "median_ns p99_ns" over N round trips. */
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

struct shared {
    _Atomic uint64_t request;
    _Atomic uint64_t answer;
};

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int cmp(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 20000;
    struct shared *shm = mmap(NULL, sizeof(*shm), PROT_READ | PROT_WRITE,
                              MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    int kick = eventfd(0, 0);
    if (shm == MAP_FAILED || kick < 0 || n <= 0)
        return 1;
    pid_t server = fork();
    if (server == 0) {
        uint64_t value;
        for (int i = 0; i < n; i++) {
            if (read(kick, &value, sizeof(value)) != sizeof(value))
                _exit(1);
            atomic_store_explicit(&shm->answer,
                                  atomic_load_explicit(&shm->request, memory_order_acquire) + 1,
                                  memory_order_release);
        }
        _exit(0);
    }
    uint64_t *samples = calloc((size_t)n, sizeof(*samples));
    uint64_t one = 1;
    for (int i = 0; i < n; i++) {
        uint64_t t0 = now_ns();
        atomic_store_explicit(&shm->request, (uint64_t)i, memory_order_release);
        if (write(kick, &one, sizeof(one)) != sizeof(one))
            return 1;
        while (atomic_load_explicit(&shm->answer, memory_order_acquire) != (uint64_t)i + 1)
            ;
        samples[i] = now_ns() - t0;
    }
    waitpid(server, NULL, 0);
    qsort(samples, (size_t)n, sizeof(*samples), cmp);
    printf("%llu %llu\n", (unsigned long long)samples[n / 2],
           (unsigned long long)samples[(size_t)n * 99 / 100]);
    return 0;
}
