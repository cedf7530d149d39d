#!/bin/busybox sh
# /init of the guest test initramfs built by tests/guest/image.py.
#
# Drives efivarfs against the variables the firmware (efird) serves and reports every
# step on the console, one line each:
#
#     EFIRD-TEST <stage> <step> <PASS|FAIL|INFO> <details>
#
# details are `key=value` words; `error=` comes last and may contain spaces.
#
# Parameters are read from /proc/cmdline, not from the environment: the kernel takes
# dotted words (`efird.hostvar=...`) for module parameters and does not pass them to init.
#   efird.stage=1|2      stage 1 (default) writes, deletes, tries PK and may kexec;
#                        stage 2 is the kexec'd kernel and checks what stage 1 left
#   efird.hostvar=N-G    variable the host set; its attributes and data are printed
#   efird.newvar=N-G     variable stage 1 creates, NV|BS|RT, data efird.newdata=<hex>
#   efird.delvar=N-G     variable stage 1 deletes
#   efird.trypk=1        stage 1 writes unsigned data to PK and expects a refusal
#   efird.pkdata=<hex>   the data for that write (default deadbeef)
#   efird.kexec=1        stage 1 kexecs into /boot/vmlinuz with /boot/initrd2.cpio
#   efird.timeout=<s>    power off with a FAIL marker after this long (default 600)
#
# Sourced with EFIRD_INIT_LIB=1 it only defines the functions, so the tests can run the
# steps on the host against a plain directory standing in for efivarfs (EFIRD_EFIVARS)
# and a file standing in for /proc/cmdline (EFIRD_CMDLINE).

EFIVARS=${EFIRD_EFIVARS:-/sys/firmware/efi/efivars}
CMDLINE=${EFIRD_CMDLINE:-/proc/cmdline}
GLOBAL=8be4df61-93ca-11d2-aa0d-00e098032b8c
STAGE=1
FAILS=0

marker() {  # marker STEP RESULT [DETAILS...]
    local step=$1 result=$2
    shift 2
    echo "EFIRD-TEST $STAGE $step $result${*:+ $*}"
}
pass() { marker "$1" PASS "${2-}"; }
info() { marker "$1" INFO "${2-}"; }
fail() {
    FAILS=$((FAILS + 1))
    marker "$1" FAIL "${2-}"
}

param() {  # param NAME [DEFAULT]: the value of NAME=... on the kernel command line
    local word
    set -f
    for word in $(cat "$CMDLINE"); do
        case $word in
            "$1"=*) set +f; echo "${word#*=}"; return 0 ;;
        esac
    done
    set +f
    echo "${2-}"
}

# --- efivarfs files: a 4-byte little-endian attributes word, then the data -------------

file_hex() { od -An -v -tx1 "$1" | tr -d ' \n'; }

var_read() {  # var_read NAME-GUID: sets VAR_ATTRS (0x%08x) and VAR_DATA (hex)
    local hex word
    [ -f "$EFIVARS/$1" ] || return 1
    hex=$(file_hex "$EFIVARS/$1") || return 1
    [ ${#hex} -ge 8 ] || return 1
    VAR_DATA=${hex#????????}
    word=${hex%"$VAR_DATA"}
    VAR_ATTRS=$(printf '0x%08x' $((0x${word:6:2}${word:4:2}${word:2:2}${word:0:2})))
}

is_hex() {  # is_hex STRING: a non-empty, even-length string of hex digits
    case $1 in '' | *[!0-9a-fA-F]*) return 1 ;; esac
    [ $((${#1} % 2)) -eq 0 ]
}

var_write() {  # var_write NAME-GUID ATTRS HEXDATA
    # efivarfs takes a variable in ONE write(): the attributes word and the data together.
    # echo -ne builds it in one buffer, writes it once and reports errno on failure.
    local a=$(($2)) escapes
    is_hex "$3" || { echo "data is not hex: '$3'" >&2; return 1; }
    escapes=$(printf '\\x%02x\\x%02x\\x%02x\\x%02x' $((a & 255)) $((a >> 8 & 255)) \
        $((a >> 16 & 255)) $((a >> 24 & 255)))$(echo "$3" | sed 's/../\\x&/g')
    echo -ne "$escapes" > "$EFIVARS/$1"
}

var_delete() {  # var_delete NAME-GUID
    # efivarfs marks most variables immutable; busybox has no chattr, e2fsprogs' does it.
    chattr -i "$EFIVARS/$1"
    rm -f "$EFIVARS/$1"
}

lower() { echo "$1" | tr 'A-F' 'a-f'; }

# --- steps ----------------------------------------------------------------------------

step_mount() {  # /proc is already there: main needs the command line first
    local m lockdown
    [ -r /proc/cmdline ] || { fail mount "error=cannot mount proc"; return 1; }
    mount -t sysfs sysfs /sys && mount -t devtmpfs devtmpfs /dev \
        || { fail mount "error=cannot mount sysfs or devtmpfs"; return 1; }
    mount -t securityfs securityfs /sys/kernel/security 2>/dev/null
    [ -d /sys/firmware/efi ] \
        || { fail mount "error=no /sys/firmware/efi: not booted through EFI"; return 1; }
    if [ -f /lib/modules/load-order ]; then
        for m in $(cat /lib/modules/load-order); do
            insmod "/lib/modules/$m" || { fail mount "error=insmod $m failed"; return 1; }
        done
    fi
    mount -t efivarfs efivarfs "$EFIVARS" \
        || { fail mount "error=cannot mount efivarfs on $EFIVARS"; return 1; }
    lockdown=$(cat /sys/kernel/security/lockdown 2>/dev/null | tr ' ' ,)
    pass mount "kernel=$(uname -r) lockdown=${lockdown:-unknown}"
}

step_list() {
    local f n=0
    for f in "$EFIVARS"/*; do
        [ -e "$f" ] || continue
        info list "${f##*/}"
        n=$((n + 1))
    done
    if [ $n -gt 0 ]; then pass list "count=$n"; else fail list "count=0 error=no variables"; fi
}

step_secureboot() {
    local v out=
    for v in SecureBoot SetupMode; do
        if var_read "$v-$GLOBAL"; then out="$out $v=$VAR_DATA"; else out="$out $v=absent"; fi
    done
    info secureboot "${out# }"
}

step_read_host() {
    local name
    name=$(param efird.hostvar)
    [ -n "$name" ] || { info read-host "skipped=no-efird.hostvar"; return 0; }
    if var_read "$name"; then
        pass read-host "var=$name attrs=$VAR_ATTRS data=$VAR_DATA"
    else
        fail read-host "var=$name error=missing or unreadable"
    fi
}

step_write() {
    local name data err
    name=$(param efird.newvar)
    data=$(lower "$(param efird.newdata)")
    [ -n "$name" ] || { info write "skipped=no-efird.newvar"; return 0; }
    if ! err=$(var_write "$name" 7 "$data" 2>&1); then
        fail write "var=$name error=${err:-write failed}"
    elif ! var_read "$name"; then
        fail write "var=$name error=not readable after the write"
    elif [ "$VAR_ATTRS" != 0x00000007 ] || [ "$VAR_DATA" != "$data" ]; then
        fail write "var=$name attrs=$VAR_ATTRS data=$VAR_DATA error=read back differs"
    else
        pass write "var=$name attrs=$VAR_ATTRS data=$VAR_DATA"
    fi
}

step_delete() {
    local name err
    name=$(param efird.delvar)
    [ -n "$name" ] || { info delete "skipped=no-efird.delvar"; return 0; }
    [ -e "$EFIVARS/$name" ] || { fail delete "var=$name error=absent before the delete"; return 0; }
    err=$(var_delete "$name" 2>&1)
    if [ -e "$EFIVARS/$name" ]; then
        fail delete "var=$name error=still present: $err"
    else
        pass delete "var=$name"
    fi
}

step_pk_write() {
    local name="PK-$GLOBAL" err
    [ "$(param efird.trypk)" = 1 ] || return 0
    # An existing PK is immutable in efivarfs: clear that, so a refusal comes from the firmware.
    [ -e "$EFIVARS/$name" ] && chattr -i "$EFIVARS/$name" 2>/dev/null
    if err=$(var_write "$name" 0x27 "$(lower "$(param efird.pkdata deadbeef)")" 2>&1); then
        fail pk-write "attrs=0x00000027 error=the unsigned write was accepted"
    else
        pass pk-write "attrs=0x00000027 error=${err##*: }"
    fi
}

step_check_stage1() {  # stage 2: what stage 1 wrote and deleted survived the kexec
    local name data
    name=$(param efird.newvar)
    data=$(lower "$(param efird.newdata)")
    if [ -z "$name" ]; then
        :
    elif ! var_read "$name"; then
        fail check-newvar "var=$name error=absent after kexec"
    elif [ "$VAR_ATTRS" != 0x00000007 ] || [ "$VAR_DATA" != "$data" ]; then
        fail check-newvar "var=$name attrs=$VAR_ATTRS data=$VAR_DATA error=differs after kexec"
    else
        pass check-newvar "var=$name attrs=$VAR_ATTRS data=$VAR_DATA"
    fi
    name=$(param efird.delvar)
    if [ -z "$name" ]; then
        :
    elif [ -e "$EFIVARS/$name" ]; then
        fail check-delvar "var=$name error=present again after kexec"
    else
        pass check-delvar "var=$name"
    fi
}

stage2_cmdline() {  # this kernel's command line, re-targeted at stage 2
    local word out=
    set -f
    for word in $(cat "$CMDLINE"); do
        case $word in
            efird.stage=* | initrd=* | BOOT_IMAGE=*) ;;
            *) out="$out $word" ;;
        esac
    done
    set +f
    echo "${out# } efird.stage=2"
}

step_kexec_load() {  # kexec_load first; kexec_file_load is what lockdown still allows
    local append err
    append=$(stage2_cmdline)
    if err=$(kexec -l /boot/vmlinuz --initrd=/boot/initrd2.cpio --append="$append" 2>&1); then
        pass kexec-load "syscall=kexec_load"
        return 0
    fi
    info kexec-load "syscall=kexec_load error=$(echo $err)"
    if err=$(kexec -s -l /boot/vmlinuz --initrd=/boot/initrd2.cpio --append="$append" 2>&1); then
        pass kexec-load "syscall=kexec_file_load"
    else
        fail kexec-load "syscall=kexec_file_load error=$(echo $err)"
        return 1
    fi
}

finish() {  # the done marker, then power off; an exiting init panics, which panic=-1 reboots
    if [ $FAILS -eq 0 ]; then marker done PASS failures=0; else marker done FAIL failures=$FAILS; fi
}

main() {
    PATH=/bin:/sbin:/usr/bin:/usr/sbin
    export PATH
    /bin/busybox mount -t proc proc /proc
    /bin/busybox --install -s /bin
    STAGE=$(param efird.stage 1)
    (
        sleep "$(param efird.timeout 600)"
        fail watchdog "error=timed out"
        poweroff -f
    ) &
    if step_mount; then
        step_list
        step_secureboot
        step_read_host
        if [ "$STAGE" = 1 ]; then
            step_write
            step_delete
            step_pk_write
        else
            step_check_stage1
        fi
        if [ "$STAGE" = 1 ] && [ "$(param efird.kexec)" = 1 ] && step_kexec_load; then
            finish
            info kexec "exec"
            kexec -e
            fail kexec "error=kexec -e returned"
        fi
    fi
    finish
    poweroff -f
    sleep 10
}

[ "${EFIRD_INIT_LIB-}" = 1 ] || main
