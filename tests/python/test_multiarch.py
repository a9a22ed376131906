"""Multi-platform images: `cargo nimify image --platform linux/amd64,linux/arm64` cross-compiles
the service for the other platform, packs that platform's ONNX Runtime and the libraries its ELF
headers name (from Debian's cross sysroot), and writes an OCI image index. skopeo reads each
platform's image from the layout and from a registry; the image of this machine runs in podman,
the other one under qemu-user, and both give the same answer.

`cargo xtask test` cross-builds example-iris and installs the other platform's ONNX Runtime first
(the same commands `image --platform` runs), so the build here is fresh."""

import gzip
import json
import os
import platform
import shutil
import subprocess
import tarfile
import time

import pytest
import requests

from conftest import BIN, Container, ROOT, free_port, nimify_image, skopeo_inspect
from test_image import IRIS, registry  # noqa: F401  (the registry fixture)

HERE, OTHER = {"x86_64": ("amd64", "arm64"), "aarch64": ("arm64", "amd64")}[platform.machine()]
QEMU = {"arm64": "qemu-aarch64", "amd64": "qemu-x86_64"}[OTHER]
ELF_MACHINE = {"amd64": 62, "arm64": 183}
BOTH = f"linux/{HERE},linux/{OTHER}"
INDEX = "application/vnd.oci.image.index.v1+json"

# What ONNX Runtime's CPU probe reads on arm64: qemu-user 7.2 passes the host's /proc/cpuinfo
# through, and the probe crashes on an x86 one. A Neoverse-N1-like core (implementer 0x41, part
# 0xd0c) with the features every ARMv8.2 server has.
ARM_CPUINFO = "".join(
    f"processor\t: {i}\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp\n"
    "CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x3\nCPU part\t: 0xd0c\nCPU revision\t: 1\n\n"
    for i in range(2)
)


def arch_flags(arch):
    """skopeo's flags that pick `arch` (and arm64's v8 variant) from an index."""
    return ["--override-arch", arch, *(["--override-variant", "v8"] if arch == "arm64" else [])]


def blob(layout, digest):
    return os.path.join(layout, "blobs", *digest.split(":"))


def layout_index(layout, tag):
    """The image index a tag of an OCI layout names."""
    top = json.load(open(os.path.join(layout, "index.json")))
    [desc] = [m for m in top["manifests"] if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag]
    assert desc["mediaType"] == INDEX, desc
    return desc["digest"], json.load(open(blob(layout, desc["digest"])))


def unpack(layout, manifest_digest, rootfs):
    """Extracts a manifest's layers, bottom first, into `rootfs` (our layers have no whiteouts)."""
    manifest = json.load(open(blob(layout, manifest_digest)))
    for layer in manifest["layers"]:
        with tarfile.open(blob(layout, layer["digest"]), "r:gz") as tar:
            tar.extractall(rootfs, filter="tar")
    return json.load(open(blob(layout, manifest["config"]["digest"])))


def elf_machine(path):
    with open(path, "rb") as f:
        head = f.read(20)
    assert head[:4] == b"\x7fELF", path
    return int.from_bytes(head[18:20], "little")


# One flower of each species (from the iris data set).
FLOWERS = [[5.1, 3.5, 1.4, 0.2], [6.4, 3.2, 4.5, 1.5], [6.3, 3.3, 6.0, 2.5]]


def infer(url):
    """The typed service's predictions: [(species, {species: probability})]."""
    r = requests.post(f"{url}/v1/models/iris/predict", json={"measurements": FLOWERS}, timeout=60)
    assert r.status_code == 200, r.text
    return [(p["species"], p["probabilities"]) for p in r.json()["predictions"]]


def wait_ready(url, proc, what, timeout=180):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited with {proc.returncode}: {proc.stderr.read()}")
        try:
            if requests.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise AssertionError(f"{what} did not get ready: {proc.stderr.read()}")


def run_foreign(rootfs, config, tmp_path):
    """Runs the image's entrypoint under qemu-user with `rootfs` as its root (`-L`: the loader,
    the libraries, ONNX Runtime and the model are all read from there), the image's environment,
    and on arm64 the CPU description ONNX Runtime probes mounted over /proc/cpuinfo in a private
    mount namespace. Returns (process, url)."""
    port, grpc = free_port(), free_port()
    env = dict(e.split("=", 1) for e in config["config"]["Env"])
    # qemu finds the loader and the libraries under -L, but some calls are not redirected there:
    # ONNX Runtime checks the model's path with one, and Debian's qemu 7.2 (deb12u18) passes
    # statx through, which is how the service checks that the ONNX Runtime library exists. The
    # model directories and the library are named by their place on this machine.
    for key in ("NIMIFY_MODEL_DIR", "NIMIFY_ASSET_DIR", "ORT_DYLIB_PATH"):
        env[key] = str(rootfs) + env[key]
    env.update(NIMIFY_HOST="127.0.0.1", NIMIFY_PORT=str(port), NIMIFY_GRPC_PORT=str(grpc), NIMIFY_SHUTDOWN_DELAY_MS="0", NIMIFY_LOG_FORMAT="json")
    # The image's environment names no cache (the chart mounts one): without this, the optimized
    # model would be saved under this machine's home directory and outlive the test.
    env["NIMIFY_CACHE_DIR"] = str(tmp_path / "cache")
    entry = config["config"]["Entrypoint"]
    argv = [QEMU, "-L", str(rootfs), str(rootfs) + entry[0], *entry[1:]]
    if OTHER == "arm64":
        cpuinfo = tmp_path / "cpuinfo"
        cpuinfo.write_text(ARM_CPUINFO)
        # unshare(1) runs as root in CI; elsewhere a user namespace maps the caller to root.
        unshare = ["unshare", "-m"] if os.geteuid() == 0 else ["unshare", "-r", "-m"]
        argv = [*unshare, "sh", "-c", f'mount --bind "$0" /proc/cpuinfo && exec "$@"', str(cpuinfo), *argv]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return proc, f"http://127.0.0.1:{port}"


def test_a_multi_platform_image_runs_on_both_platforms_with_the_same_answer(tmp_path, registry):  # noqa: F811
    layout = tmp_path / "multi"
    built = nimify_image(IRIS, "--platform", BOTH, "--output", f"oci:{layout}:multi")
    out = built.result
    digest, index = layout_index(layout, "multi")
    assert out["digest"] == digest and out["reference"] == f"oci:{layout}:multi"
    assert f"linux/{OTHER}: libraries layer" in built.stderr and f"Platform linux/{OTHER}" in built.stderr, built.stderr
    # The index names one manifest per platform, in the order asked for.
    platforms = [(m["platform"]["os"], m["platform"]["architecture"], m["platform"].get("variant")) for m in index["manifests"]]
    variant = {"amd64": None, "arm64": "v8"}
    assert platforms == [("linux", HERE, variant[HERE]), ("linux", OTHER, variant[OTHER])], platforms
    # skopeo reads the index and picks each platform from it.
    raw = json.loads(subprocess.run(["skopeo", "inspect", "--raw", f"oci:{layout}:multi"], capture_output=True, text=True, check=True).stdout)
    assert raw == index
    seen = {}
    for m in index["manifests"]:
        arch = m["platform"]["architecture"]
        info = skopeo_inspect(f"oci:{layout}:multi", *arch_flags(arch))
        # (skopeo's "Digest" is the index's: what the tag names.)
        layers = [layer["digest"] for layer in json.load(open(blob(layout, m["digest"])))["layers"]]
        assert info["Architecture"] == arch and info["Os"] == "linux" and info["Layers"] == layers, info
        assert info["Labels"]["io.nimify.model.name"] == "iris"
        seen[arch] = info
    # The model layer (the last) is one blob shared by both; the binaries and libraries are not.
    assert seen[HERE]["Layers"][-1] == seen[OTHER]["Layers"][-1]
    assert seen[HERE]["Layers"][:3] != seen[OTHER]["Layers"][:3]
    # image.json records the index and each platform's manifest.
    record = json.load(open(os.path.join(ROOT, "target", "nimify", "example-iris", "image.json")))
    assert record["digest"] == digest
    assert [(p["platform"], p["digest"]) for p in record["platforms"]] == [(f"linux/{m['platform']['architecture']}", m["digest"]) for m in index["manifests"]]

    # The other platform's files are its own: binary, ONNX Runtime, loader and libraries.
    [other_manifest] = [m["digest"] for m in index["manifests"] if m["platform"]["architecture"] == OTHER]
    rootfs = tmp_path / "rootfs"
    config = unpack(layout, other_manifest, rootfs)
    assert config["architecture"] == OTHER
    entry = config["config"]["Entrypoint"][0]
    ort = [e.split("=", 1)[1] for e in config["config"]["Env"] if e.startswith("ORT_DYLIB_PATH=")][0]
    libcs = [str(p.relative_to(rootfs)) for p in rootfs.glob("lib*/**/libc.so.6")]
    loaders = [str(p.relative_to(rootfs)) for p in rootfs.glob("lib*/ld-linux*")]
    assert libcs and loaders, sorted(str(p) for p in rootfs.rglob("*"))[:50]
    for path in (entry, ort, *libcs, *loaders):
        assert elf_machine(str(rootfs) + "/" + path.lstrip("/")) == ELF_MACHINE[OTHER], path

    # Both images answer, with the same result.
    here = Container(f"oci:{layout}:multi")
    try:
        expected = infer(here.url)
    finally:
        here.remove()
    proc, url = run_foreign(rootfs, config, tmp_path)
    try:
        wait_ready(url, proc, f"the linux/{OTHER} image under {QEMU}")
        got = infer(url)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert [s for s, _ in expected] == ["setosa", "versicolor", "virginica"], expected
    assert [s for s, _ in got] == [s for s, _ in expected], (got, expected)
    # Another CPU may round the last bits differently: the same answer, not the same bits.
    for (_, p), (_, q) in zip(got, expected):
        assert p == pytest.approx(q, abs=1e-5), (got, expected)

    # On a multi-platform base, each platform's image is built on that platform's base.
    on_base = tmp_path / "on-base"
    nimify_image(IRIS, "--platform", BOTH, "--base", f"oci:{layout}:multi", "--output", f"oci:{on_base}:x")
    for arch in (HERE, OTHER):
        layers = skopeo_inspect(f"oci:{on_base}:x", *arch_flags(arch))["Layers"]
        assert layers[:4] == seen[arch]["Layers"] and len(layers) == 7, arch
    # A single-platform base of the wrong platform is refused, naming both.
    single = tmp_path / "single"
    subprocess.run(["skopeo", "copy", *arch_flags(HERE), f"oci:{layout}:multi", f"oci:{single}:here"], check=True, capture_output=True)
    r = nimify_image(IRIS, "--platform", f"linux/{OTHER}", "--base", f"oci:{single}:here", "--output", f"oci:{tmp_path / 'x'}:x", check=False)
    assert r.returncode == 1 and f"it is a linux/{HERE} image, and this one is for linux/{OTHER}" in r.stderr, r.stderr
    assert "Building" not in r.stderr, "refused before building"
    assert not (tmp_path / "x").exists()

    # Pushed, the registry holds the same index (same digest) and each platform's manifest.
    reg = registry()
    target = f"docker://127.0.0.1:{reg.port}/nimify/iris:multi"
    pushed = nimify_image(IRIS, "--platform", BOTH, "--output", target).result
    assert pushed["digest"] == digest
    assert json.loads(subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", target], capture_output=True, text=True, check=True).stdout) == index
    for arch in (HERE, OTHER):
        info = skopeo_inspect(target, "--tls-verify=false", *arch_flags(arch))
        assert info["Layers"] == seen[arch]["Layers"] and info["Architecture"] == arch


def test_platform_mistakes_are_named_before_anything_is_built(tmp_path):
    def image(*args, env=None):
        profile = [] if "--profile" in args else ["--profile", "dev"]
        return subprocess.run([BIN, "nimify", "image", *profile, *args], cwd=IRIS, capture_output=True, text=True, env={**os.environ, **(env or {})})

    r = image("--platform", "linux/amd64,linux/s390x", "-o", f"oci:{tmp_path / 'x'}:x")
    assert r.returncode == 1 and 'unknown platform "linux/s390x"; images are built for linux/amd64 and linux/arm64' in r.stderr, r.stderr
    r = image("--platform", BOTH, "--target", "x86_64-unknown-linux-gnu", "-o", f"oci:{tmp_path / 'x'}:x")
    assert r.returncode == 1 and "--platform (or NIMIFY_PLATFORM) and --target both name what to build for" in r.stderr, r.stderr
    r = image("--target", OTHER, "-o", f"oci:{tmp_path / 'x'}:x")
    assert r.returncode == 1 and f"cannot build an image for target {OTHER}" in r.stderr and "--platform takes OS/ARCH" in r.stderr, r.stderr
    r = image("--platform", BOTH, "-o", f"docker-archive:{tmp_path / 'x.tar'}")
    assert r.returncode == 1 and "a docker-archive holds one platform's image" in r.stderr, r.stderr
    model = os.path.join(ROOT, "tests", "models", "mlp.onnx")
    r = image("--model", model, "--platform", f"linux/{OTHER}", "-o", f"oci:{tmp_path / 'x'}:x")
    assert r.returncode == 1 and f"a zero-code image runs this very cargo-nimify, which is built for this machine, not linux/{OTHER}" in r.stderr, r.stderr
    # No cross linker on PATH (and none named): said before cargo runs, with the packages to install.
    cargo = shutil.which("cargo")
    empty = tmp_path / "empty-path"
    empty.mkdir()
    r = image("--platform", f"linux/{OTHER}", "-o", f"oci:{tmp_path / 'x'}:x", env={"PATH": str(empty), "CARGO": cargo, "RUSTC": shutil.which("rustc")})
    assert r.returncode == 1 and "cannot build for linux/" in r.stderr and "apt-get install gcc-" in r.stderr, r.stderr
    assert "Compiling" not in r.stderr
    # --no-build without the other platform's build names the command that makes it.
    r = image("--platform", f"linux/{OTHER}", "--no-build", "--profile", "nosuchprofile", "-o", f"oci:{tmp_path / 'x'}:x")
    assert r.returncode == 1 and "--target" in r.stderr and "or drop --no-build" in r.stderr, r.stderr
    # A library of the other platform where this one's belongs (a stray ORT_DYLIB_PATH) is refused.
    other_ort = subprocess.run([BIN, "nimify", "ort", "install", "--platform", f"linux/{OTHER}"], capture_output=True, text=True, check=True).stdout.strip()
    r = image("-o", f"oci:{tmp_path / 'x'}:x", env={"ORT_DYLIB_PATH": other_ort})
    assert r.returncode == 1 and f"{other_ort} is built for linux/{OTHER}, not linux/{HERE}" in r.stderr, r.stderr
    assert "Building" not in r.stderr, "refused before building"
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.tar").exists()
