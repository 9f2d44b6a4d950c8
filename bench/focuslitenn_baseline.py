"""FocusLiteNN-1, run the way its authors ship it: the field's fast reference for speed.

FocusLiteNN (Wang et al., MICCAI 2020) with one kernel is a single 3 -> 1 convolution,
7 x 7 at stride 5 with padding 1, then a min pool over the map. Its speed does not
depend on its weights, so random weights are used. As shipped it runs in PyTorch on the
decoded image: here level 0 of a slide is read in strips of 4096 rows (tiffslide),
converted to float in [0, 1] and passed through the network, with 2 threads.

MP/s = level-0 pixels / wall time (reading and decoding included, as a user runs it).

Run: .venv/bin/python bench/focuslitenn_baseline.py SLIDE [--threads 2] [--strip 4096]
(``bench/scan_throughput.py`` runs it in a subprocess in the same run as the scan.)
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path
from typing import Any


def run(slide: Path, *, threads: int = 2, strip: int = 4096) -> dict[str, Any]:
    """Score a whole slide with FocusLiteNN-1; wall time, CPU time, peak RSS."""
    import numpy as np
    import tiffslide
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = torch.nn.Conv2d(3, 1, kernel_size=7, stride=5, padding=1)
    net.eval()
    t0, c0 = time.perf_counter(), time.process_time()
    s = tiffslide.TiffSlide(str(slide))
    w, h = s.dimensions
    scores = []
    with torch.inference_mode():
        for y in range(0, h, strip):
            rows = min(strip, h - y)
            rgb = np.asarray(s.read_region((0, y), 0, (w, rows), as_array=True))[..., :3]
            x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float() / 255.0
            m = net(x)
            scores.append(float(-torch.nn.functional.max_pool2d(-m, m.shape[-2:]).item()))
    s.close()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    mp = w * h / 1e6
    return {"pixels_mp": round(mp, 1), "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
            "mp_per_s": round(mp / wall, 1), "mp_per_cpu_s": round(mp / cpu, 1),
            "threads": threads, "strip_rows": strip, "score": min(scores),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("slide")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--strip", type=int, default=4096)
    args = ap.parse_args(argv)
    print(json.dumps(run(Path(args.slide), threads=args.threads, strip=args.strip)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
