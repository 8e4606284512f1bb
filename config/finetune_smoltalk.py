# Chat fine-tuning (SFT) of a pretrained WiggleGPT 124M on SmolTalk, for an 8 GB GPU: the
# settings of the published fine-tune (the original's config_finetune_native.py, which its paper's
# table lists: lr 2e-5 cosine to 2e-6, 200 warmup, 10,000 iterations, batch 1 x 64 x 512 tokens,
# AdamW betas (0.9, 0.99), weight decay 0.01, fp16, gradient checkpointing, 0 frozen layers).
#   python prepare_smoltalk.py   # builds data/smoltalk with the masks
#   python train_bio.py config/finetune_smoltalk.py
# One difference, on purpose: with the masks prepare_smoltalk.py writes, the loss counts only the
# assistant's replies (train_bio.py turns every other target into -1). The published run learned
# every token; to train exactly that: python prepare_smoltalk.py --loss_on=all --out_dir=data/smoltalk_all,
# then add --dataset=smoltalk_all. (finetune_native.py run without its config froze 8 of the 12
# blocks: freeze_layers=8 does that here.)
# From the published pretrained model instead of your own run: download ckpt_pretrain.pt and
#   python train_bio.py config/finetune_smoltalk.py --init_from=path/to/ckpt_pretrain.pt
# (the original checkpoint format loads as is, with legacy_rope on). The architecture comes
# from the checkpoint; a fresh optimizer starts at iteration 0.
# tokens per iteration: 32,768 = batch_size 1 x gradient_accumulation_steps 64 x block_size 512
# memory: ~4 GB of the 8 GB (fp16 with loss scaling, gradient checkpointing on)

init_from = "out-bio-124m/ckpt.pt"
out_dir = "out-bio-124m-sft"
dataset = "smoltalk"
eval_interval = 250  # as the original: a short eval often (20 batches)
eval_iters = 20
log_interval = 10
always_save_checkpoint = True  # ckpt_best.pt keeps the best val loss in any case

block_size = 512
batch_size = 1
gradient_accumulation_steps = 64
gradient_checkpointing = True
freeze_layers = 0  # full fine-tuning, as published
dropout = 0.0

max_iters = 10000
learning_rate = 2e-5  # a gentle rate: keep what pretraining learned
min_lr = 2e-6  # cosine decay (the default schedule), gradients clipped at 1.0
warmup_iters = 200
lr_decay_iters = 10000
weight_decay = 0.01
betas = (0.9, 0.99)

device = "auto"
dtype = "float16"  # fp16 everywhere the original was trained (RTX 3070); bf16 also works on Ampere
compile = "auto"  # compiled on CUDA where Triton works, eager elsewhere

wandb_log = False
wandb_project = "wigglegpt"
wandb_run_name = "bio-124m-sft"
