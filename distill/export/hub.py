"""Pushing a finished export to the Hugging Face Hub (a dataset repo), with huggingface_hub as usual.

The export on disk is complete before the push starts, so a push that fails (offline, no token, no network)
leaves it intact, and the message says how to upload it later.
"""

from __future__ import annotations

import os
from pathlib import Path

from rsdistill.core.errors import RSDistillError


def upload_hint(out: Path, repo_id: str) -> str:
    return (f"The export at {out} is complete; upload it later with `hf upload {repo_id} {out} . --repo-type "
            "dataset` (after `hf auth login`).")


def push_to_hub(out: Path, repo_id: str, private: bool = False) -> str:
    """Creates the dataset repo `repo_id` (if needed) and uploads the export folder `out`; returns its URL.

    Raises:
        RSDistillError: Offline (``HF_HUB_OFFLINE``), without a token or network, or refused by the Hub; the
            message names the repo and how to upload the intact export later.
    """
    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError, HTTPError

    if huggingface_hub.is_offline_mode() or os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}:
        raise RSDistillError(f"Cannot push to the Hub as {repo_id}: huggingface_hub is offline (HF_HUB_OFFLINE is "
                             f"set). {upload_hint(out, repo_id)}")
    api = huggingface_hub.HfApi()
    try:
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        api.upload_folder(folder_path=str(out), repo_id=repo_id, repo_type="dataset",
                          commit_message="Distilled set exported by rsdistill")
    except (HfHubHTTPError, HTTPError, OSError, ValueError) as error:
        raise RSDistillError(f"Could not push to the Hub as {repo_id}: {error}. Check the repo id, your token "
                             f"(`hf auth login`) and the network. {upload_hint(out, repo_id)}") from None
    return f"https://huggingface.co/datasets/{repo_id}"
