"""Boot tiny real Linux guests under QEMU (TCG) and dump their RAM several times while they work.

The result is a corpus of consecutive guest memory images with real dirty patterns, used by
``benchmarks/encoding.py``. Needs Debian's ``qemu-system-x86`` and ``busybox-static``
(``--install-deps`` installs them with apt-get); the kernel comes from Debian's
``linux-image-*`` package via ``apt-get download`` and ``dpkg-deb -x``.

Layout of the output directory (default ``benchmarks/corpus``)::

    manifest.json                 what was built, with which kernel/QEMU, and how long it took
    <workload>/image-00.raw ...   consecutive physical memory dumps of one guest (QMP pmemsave)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import re
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from corpus_initramfs import NEEDS_FILES, WORKLOADS, build_initramfs
from corpus_qmp import QmpClient

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "corpus"
READY_MARKER = "novacron-corpus: ready"


def log(message: str) -> None:
    """Progress on stderr, with a timestamp."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def install_dependencies() -> None:
    """Install QEMU and a static busybox from Debian."""
    env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    subprocess.run(["apt-get", "update"], check=True, env=env)
    subprocess.run(
        [
            "apt-get",
            "install",
            "-y",
            "--no-install-recommends",
            "qemu-system-x86",
            "busybox-static",
        ],
        check=True,
        env=env,
    )


def find_tools() -> tuple[Path, Path]:
    """QEMU and a static busybox, or SystemExit saying how to get them."""
    qemu = shutil.which("qemu-system-x86_64")
    busybox = Path("/bin/busybox")
    if qemu is None or not busybox.exists():
        msg = (
            "qemu-system-x86_64 or /bin/busybox is missing: run this script with --install-deps "
            "(or apt-get install qemu-system-x86 busybox-static)"
        )
        raise SystemExit(msg)
    file_tool = shutil.which("file")
    file_type = subprocess.run(
        [file_tool or "true", "-L", str(busybox)], capture_output=True, text=True, check=False
    )
    if file_tool and "statically linked" not in file_type.stdout:
        msg = f"{busybox} is not statically linked: apt-get install busybox-static"
        raise SystemExit(msg)
    return Path(qemu), busybox


def fetch_kernel(cache: Path) -> tuple[Path, str]:
    """Download and unpack Debian's newest cloud (or generic) amd64 kernel; return vmlinuz."""
    cache.mkdir(parents=True, exist_ok=True)
    existing = sorted(cache.glob("root/boot/vmlinuz-*"))
    if existing:
        return existing[-1], existing[-1].name.removeprefix("vmlinuz-")
    listing = subprocess.run(
        ["apt-cache", "search", "--names-only", r"^linux-image-[0-9.]+-[0-9]+-(cloud-)?amd64$"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    names = [line.split(" ", 1)[0] for line in listing.splitlines() if line]
    if not names:
        msg = "apt-cache finds no linux-image-*-amd64 package: run apt-get update first"
        raise SystemExit(msg)

    def sort_key(name: str) -> tuple[bool, list[int]]:
        return ("cloud" in name, [int(part) for part in re.findall(r"\d+", name)])

    package = max(names, key=sort_key)
    log(f"downloading kernel package {package}")
    subprocess.run(["apt-get", "download", package], cwd=cache, check=True)
    deb = next(cache.glob(f"{package}_*.deb"))
    subprocess.run(["dpkg-deb", "-x", str(deb), str(cache / "root")], check=True)
    deb.unlink()
    vmlinuz = sorted(cache.glob("root/boot/vmlinuz-*"))[-1]
    # Only vmlinuz is needed; the modules would just take disk space.
    shutil.rmtree(cache / "root" / "lib", ignore_errors=True)
    shutil.rmtree(cache / "root" / "usr", ignore_errors=True)
    return vmlinuz, vmlinuz.name.removeprefix("vmlinuz-")


REDIS_PACKAGES = ("redis-server", "redis-tools", "libjemalloc2", "liblzf1")
REDIS_PROGRAMS = {
    "usr/bin/redis-server": "usr/bin/redis-check-rdb",  # the package's redis-server links here
    "usr/bin/redis-cli": "usr/bin/redis-cli",
    "usr/bin/redis-benchmark": "usr/bin/redis-benchmark",
}
LIBRARY_DIR = "lib/x86_64-linux-gnu"


def fetch_redis(cache: Path) -> dict[str, tuple[bytes, int]]:
    """Debian's redis server and tools with every shared library they load, for the initramfs.

    The packages come from ``apt-get download`` (unpacked with ``dpkg-deb -x``); libraries they
    do not ship (libc, OpenSSL, ...) are this Debian host's, as ``ldd`` resolves them.
    """
    root = cache / "root"
    if not (root / "usr" / "bin" / "redis-check-rdb").exists():
        cache.mkdir(parents=True, exist_ok=True)
        log(f"downloading {', '.join(REDIS_PACKAGES)}")
        subprocess.run(["apt-get", "download", *REDIS_PACKAGES], cwd=cache, check=True)
        for deb in sorted(cache.glob("*.deb")):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
            deb.unlink()
    programs = {name: root / source for name, source in REDIS_PROGRAMS.items()}
    files = {name: (path.read_bytes(), 0o755) for name, path in programs.items()}
    files.update(shared_libraries(list(programs.values()), [root / "usr" / LIBRARY_DIR]))
    return files


def shared_libraries(programs: list[Path], search: list[Path]) -> dict[str, tuple[bytes, int]]:
    """Every shared library ``programs`` load (and the dynamic loader), as initramfs files.

    Libraries go to ``lib/x86_64-linux-gnu/<soname>``, the loader to its absolute path;
    ``search`` directories are tried before the host's. A library ``ldd`` cannot find stops
    the build with its name.
    """
    env = {"PATH": "/usr/bin:/bin", "LD_LIBRARY_PATH": ":".join(str(p) for p in search)}
    files: dict[str, tuple[bytes, int]] = {}
    for program in programs:
        listing = subprocess.run(
            ["ldd", str(program)], capture_output=True, text=True, check=True, env=env
        ).stdout
        for line in listing.splitlines():
            name, _, rest = line.strip().partition(" => ")
            if "not found" in rest:
                msg = f"{program.name} needs {name}, which neither the packages nor this host have"
                raise SystemExit(msg)
            if rest:  # "libfoo.so.1 => /path/libfoo.so.1 (0x...)"
                path = rest.split(" (", 1)[0]
                if path:
                    files[f"{LIBRARY_DIR}/{name}"] = (Path(path).read_bytes(), 0o755)
            elif name.startswith("/"):  # the loader: "/lib64/ld-linux-x86-64.so.2 (0x...)"
                loader = name.split(" (", 1)[0]
                files[loader.lstrip("/")] = (Path(loader).read_bytes(), 0o755)
    return files


def wait_for_marker(
    console: Path, marker: str, timeout: float, process: subprocess.Popen[bytes]
) -> None:
    """Wait until the guest prints ``marker`` on its serial console."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            msg = f"QEMU exited with {process.returncode} before the guest was ready; see {console}"
            raise SystemExit(msg)
        if console.exists() and marker in console.read_text(errors="replace"):
            return
        time.sleep(0.5)
    msg = f"the guest did not print {marker!r} within {timeout}s; see {console}"
    raise SystemExit(msg)


def dump_guest(
    qemu: Path,
    kernel: Path,
    initrd: Path,
    workload: str,
    out: Path,
    *,
    memory_mib: int,
    images: int,
    interval: float,
    warmup: float,
) -> list[dict[str, object]]:
    """Boot one guest running ``workload`` and write ``images`` consecutive RAM dumps to ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    socket_path = out / "qmp.sock"
    console = out / "console.log"
    socket_path.unlink(missing_ok=True)
    console.unlink(missing_ok=True)
    command = [
        str(qemu), "-accel", "tcg", "-m", str(memory_mib), "-smp", "1",
        "-display", "none", "-monitor", "none", "-no-reboot", "-nodefaults",
        "-serial", f"file:{console}",
        "-kernel", str(kernel), "-initrd", str(initrd),
        "-append", f"console=ttyS0 panic=-1 loglevel=4 novacron.workload={workload}",
        "-qmp", f"unix:{socket_path},server=on,wait=off",
    ]  # fmt: skip
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL)
    records: list[dict[str, object]] = []
    try:
        qmp = QmpClient(socket_path)
        wait_for_marker(console, READY_MARKER, 900, process)
        log(f"{workload}: guest ready, letting it run {warmup}s")
        time.sleep(warmup)
        for index in range(images):
            if index:
                time.sleep(interval)
            target = out / f"image-{index:02d}.raw"
            qmp.execute("stop")
            started = time.monotonic()
            qmp.execute("pmemsave", val=0, size=memory_mib << 20, filename=str(target))
            took = time.monotonic() - started
            qmp.execute("cont")
            digest = hashlib.sha256(target.read_bytes()).hexdigest()
            log(f"{workload}: {target.name} dumped in {took:.1f}s")
            records.append({"file": f"{workload}/{target.name}", "sha256": digest})
        qmp.execute("quit")
        qmp.close()
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        socket_path.unlink(missing_ok=True)
    return records


def kept_workloads(out: Path, rebuilt: set[str]) -> dict[str, object]:
    """Entries of an existing manifest for workloads not rebuilt now whose images still exist.

    Building one workload (``--workloads redis``) into a corpus adds it to the manifest
    instead of dropping the others.
    """
    path = out / "manifest.json"
    if not path.exists():
        return {}
    try:
        old = json.loads(path.read_text()).get("workloads", {})
    except (ValueError, AttributeError):
        return {}
    kept: dict[str, object] = {}
    for name, entry in old.items() if isinstance(old, dict) else ():
        images = entry.get("images", []) if isinstance(entry, dict) else []
        present = images and all((out / str(image.get("file", ""))).exists() for image in images)
        if name not in rebuilt and present:
            kept[name] = entry
    return kept


def main(argv: list[str] | None = None) -> int:
    """Build the corpus."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--memory-mib", type=int, default=256)
    parser.add_argument("--images", type=int, default=6, help="dumps per guest")
    parser.add_argument("--interval", type=float, default=3.0, help="seconds between dumps")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds after ready")
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help="comma list")
    parser.add_argument("--install-deps", action="store_true", help="apt-get install QEMU")
    args = parser.parse_args(argv)
    started = time.monotonic()
    if args.install_deps:
        install_dependencies()
    qemu, busybox = find_tools()
    kernel, kernel_version = fetch_kernel(args.out / ".kernel")
    qemu_version = subprocess.run(
        [str(qemu), "--version"], capture_output=True, text=True, check=True
    ).stdout.splitlines()[0]
    log(f"kernel {kernel_version}, {qemu_version}")
    manifest: dict[str, object] = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()} {platform.processor()}".strip(),
        "kernel": kernel_version,
        "qemu": qemu_version,
        "memory_mib": args.memory_mib,
        "interval_s": args.interval,
        "workloads": {},
    }
    workloads: dict[str, object] = {}
    for workload in args.workloads.split(","):
        initrd = args.out / f".initrd-{workload}.cpio"
        extras = fetch_redis(args.out / ".redis") if workload in NEEDS_FILES else None
        initrd.write_bytes(build_initramfs(busybox, workload, extras))
        began = time.monotonic()
        records = dump_guest(
            qemu, kernel, initrd, workload, args.out / workload,
            memory_mib=args.memory_mib, images=args.images,
            interval=args.interval, warmup=args.warmup,
        )  # fmt: skip
        workloads[workload] = {"images": records, "seconds": round(time.monotonic() - began, 1)}
    manifest["workloads"] = {**kept_workloads(args.out, set(workloads)), **workloads}
    manifest["seconds"] = round(time.monotonic() - started, 1)
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    log(f"corpus written to {args.out} in {manifest['seconds']}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
