# Fine-tune OpenAI's GPT-2 (124M) on the vendored Shakespeare, as nanoGPT's finetune_shakespeare:
# a pretrained reference next to the small from-scratch demos. Needs transformers and the GPT-2
# weights (the Hub, the local Hugging Face cache, or --init_from=<a save_pretrained folder>).
#   python train_bio.py config/finetune_shakespeare_gpt2.py
#   python sample_bio.py --out_dir=out-gpt2-shakespeare --start="ROMEO:"
# The architecture (GELU in tanh form, LayerNorm, learned positions, 50,257 ids) comes from GPT-2.
# tokens per iteration: 4,096 = batch_size 1 x gradient_accumulation_steps 16 x block_size 256
# memory: ~2 GB (124M weights, AdamW state, batch 1 x 256 tokens); minutes on a GPU, about an hour on a 2-core CPU

init_from = "gpt2"
out_dir = "out-gpt2-shakespeare"
dataset = "shakespeare"
device = "auto"
dtype = "auto"
compile = "auto"  # compiled on CUDA where Triton works, eager elsewhere

eval_interval = 5
eval_iters = 20
log_interval = 1
always_save_checkpoint = False  # only when val loss improves: fine-tuning overfits quickly

batch_size = 1
gradient_accumulation_steps = 16
block_size = 256
dropout = 0.0

max_iters = 20
learning_rate = 3e-5  # a pretrained model wants a small, constant rate
lr_schedule = "constant"
warmup_iters = 0
min_lr = 3e-5
