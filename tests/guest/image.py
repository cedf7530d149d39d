"""The guest of the boot tests: Debian 12's signed kernel and an initramfs around `init.sh`.

Everything comes from the stock Debian packages, fetched with ``apt-get download`` and
unpacked with ``dpkg-deb -x`` into a cache (``build/guest/``, or ``$EFIRD_GUEST_CACHE``);
nothing is installed on the host. The cache is keyed on the package versions, so a
security update of the kernel fetches the new one and a warm run asks apt nothing but
``apt-cache show``.

- the kernel ``linux-image-amd64`` depends on at its candidate version (bookworm or
  bookworm-security, never backports): ``/boot/vmlinuz-*``, the signed bzImage, and
  ``efivarfs.ko`` with the modules it depends on, uncompressed for busybox ``insmod``;
- ``busybox-static``: the shell and every tool the init script uses;
- ``kexec-tools``' ``/sbin/kexec`` and e2fsprogs' ``/usr/bin/chattr`` (efivarfs makes
  variables immutable and busybox has no chattr), with the shared libraries ``ldd`` finds
  for them: the ``lib*`` packages they depend on, fetched too, then the host's glibc and
  its dynamic loader (the host is the same Debian 12).

The initramfs is a newc cpio written here, in Python. Stage 1 (the outer image) also
carries ``/boot/vmlinuz`` and ``/boot/initrd2.cpio``, the stage 2 image, so that stage 1
can kexec the same kernel into stage 2; the kernel command line says which stage runs.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import lzma
import os
import re
import stat
import struct
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CACHE = REPO / "build" / "guest"
INIT_SCRIPT = Path(__file__).with_name("init.sh")

KERNEL_METAPACKAGE = "linux-image-amd64"
BUSYBOX_PACKAGE = "busybox-static"
# Dynamically linked programs stage 1 runs, by package, at their path in the package.
PROGRAMS = {"kexec-tools": "sbin/kexec", "e2fsprogs": "usr/bin/chattr"}
MODULES = ("efivarfs",)
# Libraries taken from the host rather than fetched: glibc must match the host's ld.so.
HOST_LIBRARY_PACKAGES = ("libc6",)
MULTIARCH = "x86_64-linux-gnu"
CACHE_LAYOUT = 1  # part of the cache key: bump when what a cache entry holds changes

EFI_GLOBAL_VARIABLE = "8be4df61-93ca-11d2-aa0d-00e098032b8c"
_VARIABLE_FILE = re.compile(
    r"[^\s/]+-[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)


class GuestImageError(RuntimeError):
    """The guest image cannot be fetched or built; the message says which step and why."""


class AptError(GuestImageError):
    """apt could not resolve or download a package (missing or stale package lists?)."""


# --- newc cpio ----------------------------------------------------------------------------

_NEWC_MAGIC = b"070701"
_NEWC_HEADER = 110  # the magic and 13 fields of 8 hex digits
_TRAILER = "TRAILER!!!"


@dataclass(frozen=True)
class CpioEntry:
    """One member of a newc archive; ``path`` is relative (``bin/sh``), as the kernel wants.

    ``mode`` carries the file type bits; a symlink's ``data`` is its target; ``rdev`` is
    (major, minor) for device nodes.
    """

    path: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


def _pad4(n: int) -> int:
    return -n % 4


def write_newc(entries: Iterable[CpioEntry]) -> bytes:
    """A newc ("070701") archive of ``entries``, in order, owned by root, mtime 0."""
    out = bytearray()
    members = [*entries, CpioEntry(_TRAILER, 0)]
    for ino, entry in enumerate(members, start=1):
        name = entry.path.encode() + b"\0"
        nlink = 2 if stat.S_ISDIR(entry.mode) else 1
        fields = (
            0 if entry.path == _TRAILER else ino, entry.mode, 0, 0,
            0 if entry.path == _TRAILER else nlink, 0, len(entry.data),
            0, 0, entry.rdev[0], entry.rdev[1], len(name), 0,
        )
        out += _NEWC_MAGIC + b"".join(b"%08x" % f for f in fields)
        out += name + bytes(_pad4(_NEWC_HEADER + len(name)))
        out += entry.data + bytes(_pad4(len(entry.data)))
    return bytes(out)


def read_newc(archive: bytes) -> list[CpioEntry]:
    """The members of a newc archive (gzip-compressed or not), up to its trailer."""
    if archive[:2] == b"\x1f\x8b":
        archive = gzip.decompress(archive)
    entries: list[CpioEntry] = []
    pos = 0
    while True:
        header = archive[pos:pos + _NEWC_HEADER]
        if len(header) < _NEWC_HEADER or header[:6] != _NEWC_MAGIC:
            raise ValueError(f"no newc header at offset {pos}")
        f = [int(header[6 + 8 * i:14 + 8 * i], 16) for i in range(13)]
        mode, size, rdev, namesize = f[1], f[6], (f[9], f[10]), f[11]
        pos += _NEWC_HEADER
        name = archive[pos:pos + namesize - 1].decode()
        pos += namesize + _pad4(_NEWC_HEADER + namesize)
        if name == _TRAILER:
            return entries
        data = archive[pos:pos + size]
        if len(data) != size:
            raise ValueError(f"{name}: truncated ({len(data)} of {size} bytes)")
        pos += size + _pad4(size)
        entries.append(CpioEntry(name, mode, data, rdev))


class _Tree:
    """Archive members by path, each directory added before what it holds."""

    def __init__(self) -> None:
        self.entries: dict[str, CpioEntry] = {}

    def dir(self, path: str) -> None:
        path = path.strip("/")
        if path and path not in self.entries:
            parent = path.rpartition("/")[0]
            self.dir(parent)
            self.entries[path] = CpioEntry(path, stat.S_IFDIR | 0o755)

    def _add(self, entry: CpioEntry) -> None:
        self.dir(entry.path.rpartition("/")[0])
        self.entries[entry.path] = entry

    def file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        self._add(CpioEntry(path.strip("/"), stat.S_IFREG | mode, data))

    def symlink(self, path: str, target: str) -> None:
        self._add(CpioEntry(path.strip("/"), stat.S_IFLNK | 0o777, target.encode()))

    def chardev(self, path: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._add(CpioEntry(path.strip("/"), stat.S_IFCHR | mode, rdev=(major, minor)))

    def archive(self) -> bytes:
        return write_newc(self.entries.values())


# --- the packages ---------------------------------------------------------------------------


@dataclass(frozen=True)
class GuestPackages:
    """The files the initramfs is built from, inside one cache entry."""

    kernel_version: str  # uname -r, e.g. 6.1.0-56-amd64
    kernel_package: str  # name=version of the kernel image package
    versions: Mapping[str, str]  # every package fetched, by name
    vmlinuz: Path
    modules: tuple[Path, ...]  # uncompressed .ko files, in load order (efivarfs last)
    busybox: Path
    kexec: Path
    chattr: Path
    libraries: tuple[tuple[str, Path], ...]  # (path in the guest, file) for kexec and chattr


def _run(argv: list[str], *, cwd: Path | None = None, env: Mapping[str, str] | None = None,
         error: type[GuestImageError] = GuestImageError) -> str:
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip()
        raise error(f"`{' '.join(argv)}` exited {proc.returncode}: {detail}")
    return proc.stdout


def _candidates(names: Iterable[str]) -> dict[str, dict[str, str]]:
    """The control stanza of each package's candidate version, from apt's lists."""
    text = _run(["apt-cache", "show", "--no-all-versions", *names], error=AptError)
    stanzas: dict[str, dict[str, str]] = {}
    for block in text.strip().split("\n\n"):
        fields: dict[str, str] = {}
        key = ""
        for line in block.splitlines():
            if line[:1].isspace() and key:
                fields[key] += "\n" + line.strip()
            elif ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if "Package" in fields:
            stanzas.setdefault(fields["Package"], fields)
    return stanzas


def _depends(stanza: Mapping[str, str]) -> list[str]:
    """Package names from Pre-Depends and Depends, the first of each set of alternatives."""
    names = []
    for field in ("Pre-Depends", "Depends"):
        for clause in filter(None, (c.strip() for c in stanza.get(field, "").split(","))):
            first = clause.split("|")[0].strip()
            names.append(re.split(r"[\s(:]", first, maxsplit=1)[0])
    return names


def _resolve() -> tuple[dict[str, str], str]:
    """Every package to fetch with its candidate version, and the kernel image package."""
    meta = _candidates([KERNEL_METAPACKAGE]).get(KERNEL_METAPACKAGE)
    if meta is None:
        raise AptError(f"apt knows no candidate for {KERNEL_METAPACKAGE}")
    kernel = next((d for d in _depends(meta) if d.startswith("linux-image-")), None)
    if kernel is None:
        raise GuestImageError(f"{KERNEL_METAPACKAGE} {meta['Version']} depends on no kernel image")
    stanzas = _candidates([kernel, BUSYBOX_PACKAGE, *PROGRAMS])
    frontier = [d for p in PROGRAMS for d in _depends(stanzas[p])]
    while True:
        libraries = sorted({d for d in frontier if d.startswith("lib")}
                           - set(stanzas) - set(HOST_LIBRARY_PACKAGES))
        if not libraries:
            break
        found = _candidates(libraries)
        stanzas.update(found)
        frontier = [d for stanza in found.values() for d in _depends(stanza)]
    return {name: stanza["Version"] for name, stanza in sorted(stanzas.items())}, kernel


def _host_version(package: str) -> str:
    return _run(["dpkg-query", "-W", "-f", "${Version}", package]).strip()


def _cache_key(versions: Mapping[str, str], kernel: str) -> str:
    hosted = {p: _host_version(p) for p in HOST_LIBRARY_PACKAGES}
    blob = json.dumps([CACHE_LAYOUT, versions, hosted], sort_keys=True).encode()
    return f"{versions[kernel]}-{hashlib.sha256(blob).hexdigest()[:12]}"


def _elf_section(data: bytes, wanted: str) -> bytes | None:
    """The contents of section ``wanted`` of a little-endian ELF64 file, if it has one."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise GuestImageError("not a little-endian ELF64 file")
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    headers = [struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize) for i in range(shnum)]
    strtab = headers[shstrndx][4]
    for name_off, _type, _flags, _addr, offset, size in headers:
        end = data.index(b"\0", strtab + name_off)
        if data[strtab + name_off:end].decode() == wanted:
            return data[offset:offset + size]
    return None


def modinfo(module: bytes) -> dict[str, str]:
    """The ``.modinfo`` of a kernel module: depends, vermagic, name, ..."""
    section = _elf_section(module, ".modinfo") or b""
    pairs = (item.decode().partition("=") for item in section.split(b"\0") if item)
    return {key: value for key, _, value in pairs}


def _module_bytes(path: Path) -> bytes:
    """A module uncompressed: busybox insmod takes plain ELF only."""
    if path.name.endswith(".ko"):
        return path.read_bytes()
    if path.name.endswith(".ko.xz"):
        return lzma.decompress(path.read_bytes())
    if path.name.endswith(".ko.gz"):
        return gzip.decompress(path.read_bytes())
    raise GuestImageError(f"{path}: no decompressor for this module format")


def _module_closure(moddir: Path, names: Iterable[str]) -> list[tuple[str, bytes]]:
    """The modules ``names`` and what they depend on, dependencies first."""
    index = {p.name.split(".ko")[0].replace("-", "_"): p for p in moddir.rglob("*.ko*")}
    ordered: dict[str, bytes] = {}

    def visit(name: str, chain: tuple[str, ...]) -> None:
        key = name.replace("-", "_")
        if key in ordered:
            return
        if key in chain:
            raise GuestImageError(f"module dependency cycle: {' -> '.join((*chain, key))}")
        if key not in index:
            raise GuestImageError(f"module {name} is not in {moddir}")
        data = _module_bytes(index[key])
        for dep in filter(None, modinfo(data).get("depends", "").split(",")):
            visit(dep, (*chain, key))
        ordered[key] = data

    for name in names:
        visit(name, ())
    return list(ordered.items())


_LDD_LINE = re.compile(r"(?:(?P<soname>\S+) => )?(?P<path>\S+) \(0x[0-9a-f]+\)")


def _shared_libraries(programs: Iterable[Path], tree: Path) -> dict[str, Path]:
    """Path in the guest -> file, for every library and the loader the programs need.

    ``ldd`` runs the host's loader with the fetched libraries first on the search path;
    what they do not provide comes from the host, at the same path in the guest.
    """
    libdirs = [tree / "lib" / MULTIARCH, tree / "usr" / "lib" / MULTIARCH]
    env = {**os.environ, "LD_LIBRARY_PATH": ":".join(str(d) for d in libdirs if d.is_dir())}
    found: dict[str, Path] = {}
    for program in programs:
        for line in _run(["ldd", str(program)], env=env).splitlines():
            line = line.strip()
            if line.endswith("not found"):
                raise GuestImageError(
                    f"{program.name} needs {line.split()[0]}, which neither the fetched "
                    "packages nor the host provide")
            match = _LDD_LINE.fullmatch(line)
            if match is None or not match["path"].startswith("/"):
                continue  # linux-vdso.so.1 lives in the kernel
            path = Path(match["path"])
            guest = f"/{path.relative_to(tree)}" if path.is_relative_to(tree) else str(path)
            found[guest] = path
    return found


def _put(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)


def _collect(tree: Path, root: Path) -> dict[str, object]:
    """Copy what the guest needs from the unpacked packages into ``root``, at guest paths."""
    images = sorted(tree.glob("boot/vmlinuz-*"))
    if len(images) != 1:
        raise GuestImageError(f"expected one /boot/vmlinuz-* in the kernel package, got {images}")
    kernel_version = images[0].name.removeprefix("vmlinuz-")
    _put(root / "boot" / "vmlinuz", images[0].read_bytes())
    modules = _module_closure(tree / "lib" / "modules" / kernel_version, MODULES)
    for name, data in modules:
        _put(root / "lib" / "modules" / f"{name}.ko", data)
    _put(root / "bin" / "busybox", (tree / "bin" / "busybox").read_bytes(), 0o755)
    for path in PROGRAMS.values():
        _put(root / path, (tree / path).read_bytes(), 0o755)
    libraries = _shared_libraries((tree / p for p in PROGRAMS.values()), tree)
    for guest, source in libraries.items():
        _put(root / guest.lstrip("/"), source.read_bytes(), 0o755)
    return {"kernel_version": kernel_version, "modules": [name for name, _ in modules],
            "libraries": sorted(libraries)}


def _load(entry: Path) -> GuestPackages:
    manifest = json.loads((entry / "manifest.json").read_text())
    root = entry / "root"
    return GuestPackages(
        kernel_version=manifest["kernel_version"],
        kernel_package=manifest["kernel_package"],
        versions=manifest["versions"],
        vmlinuz=root / "boot" / "vmlinuz",
        modules=tuple(root / "lib" / "modules" / f"{m}.ko" for m in manifest["modules"]),
        busybox=root / "bin" / "busybox",
        kexec=root / PROGRAMS["kexec-tools"],
        chattr=root / PROGRAMS["e2fsprogs"],
        libraries=tuple((g, root / g.lstrip("/")) for g in manifest["libraries"]),
    )


def _apt_state() -> str:
    """A fingerprint of what candidate versions depend on: apt's lists and configuration."""
    digest = hashlib.sha256()
    for top in (Path("/var/lib/apt/lists"), Path("/etc/apt")):
        for path in sorted(top.rglob("*")):
            if path.is_file() and path.name != "lock" and "partial" not in path.parts:
                st = path.stat()
                digest.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _resolve_cached(cache: Path) -> tuple[dict[str, str], str]:
    """_resolve, remembered until apt's lists or configuration change.

    Each apt-cache call costs a second or more where apt keeps no binary cache (Debian's
    container images), and resolving takes several.
    """
    state, saved = _apt_state(), cache / "resolved.json"
    try:
        resolved = json.loads(saved.read_text())
        if resolved["apt_state"] == state:
            return resolved["versions"], resolved["kernel"]
    except (OSError, ValueError, KeyError):
        pass
    versions, kernel = _resolve()
    cache.mkdir(parents=True, exist_ok=True)
    temp = saved.with_name(f".resolved-{os.getpid()}.json")
    temp.write_text(json.dumps({"apt_state": state, "versions": versions, "kernel": kernel}))
    temp.replace(saved)
    return versions, kernel


def _fetch(cache: Path) -> GuestPackages:
    versions, kernel = _resolve_cached(cache)
    entry = cache / _cache_key(versions, kernel)
    if (entry / "manifest.json").is_file():
        return _load(entry)
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=cache) as tmp:
        work = Path(tmp)
        debs, tree, staged = work / "debs", work / "tree", work / "entry"
        debs.mkdir()
        # As root, apt-get download writes into the working directory, hence a fresh one.
        _run(["apt-get", "download", "-q", *(f"{p}={v}" for p, v in versions.items())],
             cwd=debs, error=AptError)
        for deb in sorted(debs.glob("*.deb")):
            _run(["dpkg-deb", "-x", str(deb), str(tree)])
        manifest = {"kernel_package": f"{kernel}={versions[kernel]}", "versions": versions,
                    **_collect(tree, staged / "root")}
        (staged / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        try:
            staged.rename(entry)
        except OSError:
            if not (entry / "manifest.json").is_file():  # not a concurrent fetch that won
                raise
    return _load(entry)


def fetch_packages(cache: Path | None = None) -> GuestPackages:
    """The guest's kernel, module, busybox, kexec and chattr, fetched once into ``cache``.

    ``cache`` defaults to ``$EFIRD_GUEST_CACHE`` or ``build/guest/``. Needs apt's package
    lists; when they are missing or stale (a fresh machine, a superseded security update)
    it runs ``apt-get update`` once, which needs root.
    """
    if cache is None:
        cache = Path(os.environ.get("EFIRD_GUEST_CACHE") or DEFAULT_CACHE)
    cache = cache.resolve()  # ldd prints the fetched libraries' paths as it was given them
    try:
        return _fetch(cache)
    except AptError:
        _run(["apt-get", "update", "-q"])
        return _fetch(cache)


# --- the initramfs ----------------------------------------------------------------------


def _stage2_tree(pkgs: GuestPackages) -> _Tree:
    tree = _Tree()
    for path in ("proc", "sys", "dev", "tmp"):
        tree.dir(path)
    # Before devtmpfs is mounted: init's stdio, and where ash points a background job's stdin.
    tree.chardev("dev/console", 5, 1)
    tree.chardev("dev/null", 1, 3, 0o666)
    tree.file("init", INIT_SCRIPT.read_bytes(), 0o755)
    tree.file("bin/busybox", pkgs.busybox.read_bytes(), 0o755)
    tree.symlink("bin/sh", "busybox")  # the rest: busybox --install -s /bin, at boot
    for module in pkgs.modules:
        tree.file(f"lib/modules/{module.name}", module.read_bytes())
    tree.file("lib/modules/load-order", "".join(f"{m.name}\n" for m in pkgs.modules).encode())
    return tree


def build_stage2_initramfs(pkgs: GuestPackages) -> bytes:
    """The stage 2 image, uncompressed: init, busybox and the modules."""
    return _stage2_tree(pkgs).archive()


def build_initramfs(pkgs: GuestPackages, out: Path) -> Path:
    """Write the stage 1 image, gzip-compressed, to ``out``; returns ``out``.

    It holds the stage 2 contents plus kexec, chattr and their libraries, the kernel at
    ``/boot/vmlinuz`` and the stage 2 image at ``/boot/initrd2.cpio``.
    """
    tree = _stage2_tree(pkgs)
    tree.file(PROGRAMS["kexec-tools"], pkgs.kexec.read_bytes(), 0o755)
    tree.file(PROGRAMS["e2fsprogs"], pkgs.chattr.read_bytes(), 0o755)
    for guest, source in pkgs.libraries:
        tree.file(guest, source.read_bytes(), 0o755)
    tree.file("boot/vmlinuz", pkgs.vmlinuz.read_bytes())
    tree.file("boot/initrd2.cpio", build_stage2_initramfs(pkgs))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(gzip.compress(tree.archive(), compresslevel=6, mtime=0))
    return out


# --- the kernel command line and the markers ------------------------------------------------


def kernel_cmdline(*, hostvar: str, newvar: str, newdata: bytes, delvar: str, kexec: bool,
                   trypk: bool, timeout: int = 600) -> str:
    """The command line for stage 1; variables are efivarfs file names, ``Name-guid``.

    ``timeout`` (seconds) is the guest's own watchdog: past it, it prints a FAIL marker
    and powers off.
    """
    for flag, name in (("hostvar", hostvar), ("newvar", newvar), ("delvar", delvar)):
        if not _VARIABLE_FILE.fullmatch(name):
            raise ValueError(f"{flag}={name!r} is not an efivarfs file name (Name-guid)")
    if not newdata:
        raise ValueError("newdata must not be empty: an efivarfs write of no data deletes")
    return " ".join([
        "console=ttyS0", "panic=-1", "efi=debug", "efird.stage=1",
        f"efird.hostvar={hostvar}", f"efird.newvar={newvar}", f"efird.newdata={newdata.hex()}",
        f"efird.delvar={delvar}", f"efird.kexec={int(kexec)}", f"efird.trypk={int(trypk)}",
        f"efird.timeout={timeout}",
    ])


class Marker(NamedTuple):
    """``EFIRD-TEST <stage> <step> <PASS|FAIL|INFO> <details>``, one console line."""

    stage: int
    step: str
    result: str
    details: str

    def fields(self) -> dict[str, str]:
        """The ``key=value`` words of the details; ``error=`` takes the rest of the line."""
        error = _ERROR_FIELD.search(self.details)
        head = self.details[:error.start()] if error else self.details
        out = dict(word.partition("=")[::2] for word in head.split() if "=" in word)
        if error:
            out["error"] = error[1]
        return out


_ERROR_FIELD = re.compile(r"(?:^| )error=(.*)$")
_MARKER = re.compile(r"EFIRD-TEST (\d+) (\S+) (PASS|FAIL|INFO)(?: (.*))?")


def parse_markers(serial_log: str) -> list[Marker]:
    """The markers in a serial log, in order; kernel messages may share their lines."""
    markers = []
    for line in serial_log.splitlines():
        match = _MARKER.search(line.rstrip("\r"))
        if match:
            stage, step, result, details = match.groups()
            markers.append(Marker(int(stage), step, result, (details or "").strip()))
    return markers
