import os

import pytest
import torch

# the tests must not depend on third-party plugins installed in the environment
os.environ.setdefault("ANIRA_LOAD_PLUGINS", "")
# tiny models: one thread is fastest and immune to oversubscription on a shared 2-core box
torch.set_num_threads(1)

from anira import build_model, preset_config  # noqa: E402

POLICIES = ["fixed", "anira-e", "anira-o"]


@pytest.fixture
def cfg():
    return preset_config("test", vocab_size=24)


def make_model(cfg, policy, seed=0, **options):
    model = build_model(cfg, policy, seed=seed, **options)
    model.eval()
    return model


@pytest.fixture
def tokens():
    g = torch.Generator().manual_seed(1)
    return torch.randint(1, 24, (3, 12), generator=g)
