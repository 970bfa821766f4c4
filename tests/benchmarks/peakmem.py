"""Peak resident memory of a benchmark's whole process tree (this driver, Ray's GCS, raylet,
agents and every worker), shared by the benchmark scripts, which import it as a sibling module.
"""

from __future__ import annotations

import threading


class PeakMemory:
    """Background sampler of the resident memory of this process and all its descendants.

    `peak_pss`: the summed proportional set size (a page shared by k processes counts 1/k in
    each), the memory the group really holds. `peak_rss`: the summed RSS, which counts shared
    pages (libraries, object-store mappings) once per process, an upper bound.
    `processes`: the most processes seen in one sample.
    """

    def __init__(self, interval_s: float = 0.5):
        import psutil

        self._me = psutil.Process()
        self._interval = interval_s
        self._stop = threading.Event()
        self.peak_pss = self.peak_rss = 0
        self.processes = self.samples = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        import psutil

        pss = rss = 0
        procs = [self._me, *self._me.children(recursive=True)]
        for p in procs:
            try:
                info = p.memory_full_info()
            except psutil.Error:  # a worker that exited between listing and reading
                continue
            pss += info.pss
            rss += info.rss
        self.peak_pss = max(self.peak_pss, pss)
        self.peak_rss = max(self.peak_rss, rss)
        self.processes = max(self.processes, len(procs))
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self._interval)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
