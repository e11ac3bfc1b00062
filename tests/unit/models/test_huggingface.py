"""transfer_pipeline.models.huggingface.from_config: a Hugging Face model built from its config.json, and its
errors naming the key (transformers is in the dev extra). Training one through the pipeline:
tests/e2e/test_huggingface_runs.py.
"""

from __future__ import annotations

import pytest
from helpers import bert_config

transformers = pytest.importorskip("transformers", reason="pip install -e '.[dev]' installs transformers")

from transfer_pipeline.errors import UserError  # noqa: E402


def test_from_config_errors_name_the_key(tmp_path):
    from transfer_pipeline.models.huggingface import from_config

    with pytest.raises(UserError, match=r"model.config: cannot read"):
        from_config(str(tmp_path / "nothing.json"))
    with pytest.raises(UserError, match=r"has no model_type"):
        from_config({"hidden_size": 8})
    with pytest.raises(UserError, match=r"model.num_lables: BertConfig has no attribute"):
        from_config(bert_config(tmp_path, 2), num_lables=3)
