"""The web page's hierarchy picture at scale: a 500-layer catalog in Debian's
Chromium (Playwright), from navigation start until every node shows its state
(the layout is made once per catalog; states arrive over SSE).

Also printed: the Graphviz layout of 500 layers (made once per catalog or
upstream change) and the page's size. Goal: under 2 s in the browser.

    python3 -m benchmarks.bench_web_graph [LAYERS]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from tests.browser import chromium
from tests.integration.test_web_scale import time_graph_page
from tests.web_fakes import FakeSource, ServedInThread, catalog_of

ROUNDS = 5


def main() -> None:
    layers = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        served = ServedInThread(FakeSource(catalog_of(layers), Path(tmp) / "state.db"))
        layout_s = time.perf_counter() - started
        try:
            picture = served.server._picture
            size_kb = len(picture[1]) / 1024 if picture else 0.0
            with chromium() as context:
                time_graph_page(context, served.url, layers)  # the browser warm
                runs = [time_graph_page(context, served.url, layers) for _ in range(ROUNDS)]
        finally:
            served.stop()
    print(f"{layers} layers: server start with the Graphviz layout {layout_s:.2f} s; "
          f"picture {size_kb:.0f} KiB")
    print(f"graph page in Chromium, navigation to every node drawn: median "
          f"{statistics.median(runs):.0f} ms, min {min(runs):.0f} ms, max {max(runs):.0f} ms "
          f"(goal < 2000 ms)")


if __name__ == "__main__":
    main()
