"""Live drift: each served version's prompts against the profile of the prompts it was trained on.

Every `every` requests, once its window holds `minimum` prompts, a version's drift scores (serving/drift.py) go to
/metrics; a score that crosses its threshold is an alert, logged once when it starts (alerts.jsonl and the server's
output) as the cue to retrain on what users now ask.
"""

from __future__ import annotations

import sys
from collections import Counter

from lightning_ft.serving import metrics
from lightning_ft.serving.drift import DriftMonitor
from lightning_ft.serving.requestlog import RequestLog


class DriftWatch:
    def __init__(
        self, profiles: dict[str, dict | None], window: int = 200, threshold: float | None = None, every: int = 10
    ) -> None:
        self.monitors = {name: DriftMonitor(profile, window) for name, profile in profiles.items() if profile}
        self.threshold, self.every = threshold, every
        self.minimum = min(50, window)  # fewer prompts than this give scores too noisy to alert on
        self.seen: Counter = Counter()
        self.alerting: dict[str, set[str]] = {name: set() for name in self.monitors}

    def observe(self, version: str, prompt_ids: list[int], log: RequestLog, label: str | None = None) -> None:
        monitor = self.monitors.get(version)
        if monitor is None:
            return
        monitor.observe(prompt_ids, label)
        self.seen[version] += 1
        if self.seen[version] % self.every or len(monitor) < self.minimum:
            return
        scores = monitor.scores()
        for statistic, value in scores.items():
            metrics.DRIFT.labels(version, statistic).set(value)
        alerts = {line.split()[0]: line for line in monitor.alerts(self.threshold)}
        for statistic in sorted(alerts.keys() - self.alerting[version]):
            metrics.DRIFT_ALERTS.labels(version, statistic).inc()
            entry = {"version": version, "statistic": statistic, "alert": alerts[statistic], "scores": scores}
            log.alert(entry | {"prompts": len(monitor)})
            print(
                f"drift alert: {version}: {alerts[statistic]} over the last {len(monitor)} prompts; retrain on them: "
                f"lightning-ft data from-feedback {log.folder} --format preference|kto|instruction",
                file=sys.stderr,
                flush=True,
            )
        self.alerting[version] = set(alerts)
