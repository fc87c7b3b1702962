"""The trainer tests build tiny models from configs and never download: keep the libraries off the network
(no hub look-ups, no telemetry), as CI has no network beyond package registries."""

import os

for _key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY"):
    os.environ.setdefault(_key, "1")
