# GELU baseline demo: the same small model with GELU, LayerNorm and learned positions,
# on the vendored Shakespeare; a few minutes on a 2-core laptop CPU.
#   python train_bio.py config/shakespeare_gelu.py
# tokens per iteration: 1,024 = batch_size 8 x gradient_accumulation_steps 1 x block_size 128
# memory: sized for any laptop (~0.5 GB of RAM)
# Everything else (seed, data, batches, token budget, schedule) comes from its twin
# config/shakespeare_bio.py, so the two val losses compare like for like.
from config.shakespeare_bio import *  # noqa: F401,F403

use_bio_mlp = False
use_rmsnorm = False
use_rope = False

out_dir = "out-shakespeare-gelu"
