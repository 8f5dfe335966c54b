"""No network: the model-hub libraries are switched to offline mode before they load.

reportgen never downloads weights, configs or data: a dossier must be built from the
files it names, and the machines it runs on are often closed. smp builds models with
`encoder_weights=None`, but timm and huggingface_hub can still reach the hub for a
model *config* (e.g. an `hf-hub:` model name); their offline switches make such a
lookup fail at once, without a DNS query. The spec refuses hub-backed names first
(`models.build.check_encoder_name`); this is the second line of defence.
"""

from __future__ import annotations

import os
import sys

OFFLINE_SWITCHES = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
}


def stay_offline() -> None:
    """Set the hub libraries' offline switches in this process.

    huggingface_hub reads its switch once, when it is imported, so the environment is
    set first and a copy that was imported before reportgen is switched too."""
    os.environ.update(OFFLINE_SWITCHES)
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HUB_OFFLINE = True
