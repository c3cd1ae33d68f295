"""Load test: start the server on loopback (scripts/serverctl.py), let N clients click at once for T seconds, and
print a table: clients, requests, errors, latency (median, p95), server memory (RSS of its process tree).

    .venv/bin/python scripts/load_test.py --clients 8 --seconds 120

Each client (a thread with its own client_id) runs interactions of 3 rounds on small generated volumes, cycling
through images and label names; every interaction uses a new label name, so the server keeps opening interactions
and its LRU store (`--conf max_interactions`) has to drop old ones. Before the load, every click sequence is sent
once on its own (the reference); under load every answer must equal its reference voxel for voxel ("mismatches").
tests/test_soak.py runs the same code with assertions.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import requests

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
APP = os.path.join(ROOT, "apps", "limnet")
sys.path.insert(0, APP)
sys.path.insert(0, os.path.join(ROOT, "scripts"))

from serverctl import start_server, stop_server, tree_rss  # noqa: E402

# small volumes (CPU-feasible with 8 clients on 2 cores), three shapes and object kinds
VOLUMES = (("blob", 11, (80, 80), 24), ("touching", 12, (72, 72), 20), ("tube", 13, (88, 88), 22))
LABELS = ("organ", "lesion", "vessel", "tumor")
EXTENSIONS = (".nrrd", ".nii.gz")


@dataclass
class Pattern:
    """One interaction: an image and its rounds, each the full click lists sent in that round."""

    image: str
    rounds: list[tuple[list, list]]


@dataclass
class Report:
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)
    requests_per_client: dict[int, int] = field(default_factory=dict)
    interactions: int = 0
    rss: list[tuple[float, int]] = field(default_factory=list)  # (seconds since start, bytes)
    open_interactions: list[tuple[float, int]] = field(default_factory=list)  # (seconds since start, count)
    seconds: float = 0.0


def make_studies(folder: str) -> list[Pattern]:
    """Write the volumes into `folder` and return two click patterns per volume (from its true mask)."""
    import nibabel as nib

    from lib.data.synthetic import generate_case

    os.makedirs(folder, exist_ok=True)
    patterns = []
    for name, seed, size, depth in VOLUMES:
        case = generate_case(np.random.default_rng(seed), name, size=size, depth=(depth, depth))
        nib.save(nib.Nifti1Image(case.image.astype(np.float32), np.diag(list(case.spacing) + [1.0])),
                 os.path.join(folder, f"{name}.nii.gz"))
        label = case.label.astype(bool)
        per_slice = label.sum((0, 1))
        k = int(np.argmax(per_slice))
        ks = [z for z in np.nonzero(per_slice)[0] if abs(int(z) - k) >= 2] or [k]
        for variant in range(2):
            k2 = int(ks[variant * (len(ks) - 1)])
            first = _inside(label[:, :, k], k)
            second = _inside(label[:, :, k2], k2, pick=variant + 1)
            outside = _outside(label[:, :, k], k)
            fg1 = [first] if variant == 0 else [second]
            fg2 = fg1 + ([second] if variant == 0 else [first])
            patterns.append(Pattern(name, [(fg1, []), (fg2, []), (fg2, [outside])]))
    return patterns


def _inside(mask2d: np.ndarray, k: int, pick: int = 0) -> list[int]:
    xs, ys = np.nonzero(mask2d)
    i = (len(xs) // 2 + pick * len(xs) // 5) % len(xs)
    return [int(xs[i]), int(ys[i]), k]


def _outside(mask2d: np.ndarray, k: int) -> list[int]:
    from scipy import ndimage as ndi

    ring = ndi.binary_dilation(mask2d, iterations=4) & ~ndi.binary_dilation(mask2d, iterations=2)
    xs, ys = np.nonzero(ring)
    return [int(xs[len(xs) // 3]), int(ys[len(ys) // 3]), k]


def decode(content: bytes, extension: str) -> np.ndarray:
    if extension == ".nii.gz":
        import nibabel as nib

        return np.asarray(nib.Nifti1Image.from_bytes(gzip.decompress(content)).dataobj)
    import nrrd

    with tempfile.NamedTemporaryFile(suffix=".nrrd") as f:
        f.write(content)
        f.flush()
        return nrrd.read(f.name)[0]


def click(url: str, image: str, fg: list, bg: list, label: str, client_id: str, extension: str = ".nrrd",
          timeout: float = 600) -> np.ndarray:
    params = {"foreground": fg, "background": bg, "label": label, "client_id": client_id,
              "result_extension": extension}
    r = requests.post(f"{url}/infer/limnet", params={"image": image, "output": "image"},
                      data={"params": json.dumps(params)}, timeout=timeout)
    if r.status_code != 200:
        raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")
    return decode(r.content, extension)


def references(url: str, patterns: list[Pattern]) -> list[list[np.ndarray]]:
    """Every pattern's rounds sent one at a time by one client: the answers under load must equal these."""
    refs = []
    for p, pattern in enumerate(patterns):
        refs.append([click(url, pattern.image, fg, bg, f"reference-{p}", "reference") for fg, bg in pattern.rounds])
    return refs


def run_load(url: str, server_pid: int, patterns: list[Pattern], clients: int, seconds: float,
             refs: list[list[np.ndarray]] | None = None) -> Report:
    report = Report()
    lock = threading.Lock()
    start = time.monotonic()
    deadline = start + seconds
    done = threading.Event()

    def client(c: int) -> None:
        n, count = 0, 0
        while time.monotonic() < deadline:
            p = (c + n) % len(patterns)
            pattern = patterns[p]
            label = f"{LABELS[(c + n) % len(LABELS)]}-{c}-{n}"  # a new interaction every time
            extension = EXTENSIONS[c % len(EXTENSIONS)]
            with lock:
                report.interactions += 1
            for r, (fg, bg) in enumerate(pattern.rounds):
                if time.monotonic() >= deadline:
                    break
                t0 = time.monotonic()
                try:
                    out = click(url, pattern.image, fg, bg, label, f"client-{c}", extension)
                except Exception as e:  # noqa: BLE001 - every failure is counted
                    with lock:
                        report.errors.append(f"client {c} pattern {p} round {r}: {e}")
                    continue
                finally:
                    count += 1
                with lock:
                    report.latencies.append(time.monotonic() - t0)
                    if refs is not None and not (out.shape == refs[p][r].shape and np.array_equal(out, refs[p][r])):
                        report.mismatches.append(f"client {c} pattern {p} round {r}")
            n += 1
        with lock:
            report.requests_per_client[c] = count

    def memory() -> None:
        while not done.is_set():
            report.rss.append((time.monotonic() - start, tree_rss(server_pid)))
            done.wait(0.5)

    def interactions() -> None:  # /info waits its turn behind the clicks: its own thread
        while not done.is_set():
            try:
                info = requests.get(url + "/info/", timeout=600).json()
                report.open_interactions.append((time.monotonic() - start,
                                                 int(info["models"]["limnet"]["open_interactions"])))
            except Exception:  # noqa: BLE001 - a monitor, not a client
                pass
            done.wait(3)

    watchers = [threading.Thread(target=memory, daemon=True), threading.Thread(target=interactions, daemon=True)]
    for w in watchers:
        w.start()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    for w in watchers:
        w.join()
    report.rss.append((time.monotonic() - start, tree_rss(server_pid)))
    report.seconds = time.monotonic() - start
    return report


def plateau(report: Report, limit: int) -> tuple[float, int, int] | None:
    """(time the LRU first held `limit` interactions, peak RSS from then to halfway to the run's end, peak RSS in the
    rest), or None if it never did. Memory still settles for a while after the LRU first fills (the allocator sees
    interactions of every size come and go); a store that kept dropped interactions would go on growing by each one's
    memory to the end of the run."""
    full = next((t for t, n in report.open_interactions if n >= limit), None)
    if full is None:
        return None
    end = max((t for t, _ in report.rss), default=full)
    middle = full + (end - full) / 2
    before = max((r for t, r in report.rss if t <= middle), default=0)
    after = max((r for t, r in report.rss if t > middle), default=before)
    return full, before, after


def table(report: Report, clients: int, rss_before: int, machine: str) -> str:
    lat = sorted(report.latencies)
    p95 = lat[min(len(lat) - 1, int(round(0.95 * (len(lat) - 1))))] if lat else float("nan")
    mb = 1 << 20
    rows = [
        "| clients | seconds | requests | errors | mismatches | interactions opened | max open | median s | p95 s "
        "| server RSS before MB | server peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        f"| {clients} | {report.seconds:.0f} | {sum(report.requests_per_client.values())} | {len(report.errors)} "
        f"| {len(report.mismatches)} | {report.interactions} | {max((n for _, n in report.open_interactions), default=0)} "
        f"| {statistics.median(lat) if lat else float('nan'):.2f} | {p95:.2f} | {rss_before / mb:.0f} "
        f"| {max(r for _, r in report.rss) / mb:.0f} |",
    ]
    samples = [report.rss[int(i * (len(report.rss) - 1) / 6)] for i in range(7)] if report.rss else []
    timeline = ", ".join(f"{t:.0f} s: {r / mb:.0f}" for t, r in samples)
    return f"{machine}\n" + "\n".join(rows) + f"\nserver RSS MB over the run: {timeline}"


def server_times(log_path: str) -> list[float]:
    """Seconds per click as the server logged them (MONAI Label's "++ Latencies => Total: ...")."""
    out = []
    with open(log_path, errors="replace") as f:
        for line in f:
            if "Latencies => Total:" in line:
                out.append(float(line.split("Total:")[1].split(";")[0]))
    return out


def machine() -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, {gpu}, torch threads "
            f"{torch.get_num_threads()}; {time.strftime('%Y-%m-%d')}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=120)
    ap.add_argument("--max-interactions", type=int, default=0, help="server's LRU size (default: 2 x clients)")
    ap.add_argument("--no-check", action="store_true", help="skip the sequential references (no mismatch count)")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="limnet-load-")
    try:
        patterns = make_studies(os.path.join(work, "studies"))
        app = os.path.join(work, "app")
        shutil.copytree(APP, app, ignore=shutil.ignore_patterns("logs", "__pycache__", "*.prev.pt", "limnet.pt"))
        log = open(os.path.join(work, "server.log"), "w")
        max_open = args.max_interactions or 2 * args.clients
        proc, url = start_server(app, os.path.join(work, "studies"), log=log, conf={"max_interactions": max_open},
                                 HOME=work, MONAI_LABEL_AUTO_UPDATE_SCORING="false")
        try:
            print(f"server {url}; {len(patterns)} click patterns; max_interactions {max_open}", flush=True)
            refs = None if args.no_check else references(url, patterns)
            rss_before = tree_rss(proc.pid)
            report = run_load(url, proc.pid, patterns, args.clients, args.seconds, refs)
        finally:
            stop_server(proc)
            log.close()
        print(table(report, args.clients, rss_before, machine()))
        served = server_times(os.path.join(work, "server.log"))
        if served:
            print(f"server's own time per click: median {statistics.median(served):.2f} s, "
                  f"max {max(served):.2f} s ({len(served)} clicks, references included)")
        full = plateau(report, max_open)
        if full:
            print(f"LRU full ({max_open}) at {full[0]:.0f} s: server RSS at most {full[1] / 2**20:.0f} MB from then to "
                  f"mid-run, at most {full[2] / 2**20:.0f} MB after")
        for line in (report.errors + report.mismatches)[:10]:
            print("  ", line)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
