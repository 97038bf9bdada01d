set -e
# run from a directory of its own with the package installed; what made docs/results/order_ablation_at_n4
date -u
python -m ringrl.cli collect dm_control/cartpole-swingup-v0 --policy sac --steps 40000 --learning-starts 5000 --eval-every 100000000 --out sac40k.hdf5 --quiet
date -u
python -m ringrl.cli train /dev/null --run-dir at_n4 --no-progress \
  --set name=ablation-at-n4 --set data.path=sac40k.hdf5 --set agent.kind=at --set agent.num_trajectories=4 \
  --set agent.steps_per_trajectory=1000 --set agent.tokens_per_step=1 --set agent.max_timestep=1000 \
  --set model.num_layers=2 --set model.d_model=64 --set model.num_heads=4 --set model.num_kv_heads=4 \
  --set model.attention=ring --set model.block_size=125 --set model.remat=false \
  --set train.steps=400 --set train.batch_size=4 --set train.mesh_seq=4 --set train.ckpt_every=400 \
  --set optim.lr=0.001 --set optim.warmup_steps=40 --set optim.end_lr_ratio=0.1
date -u
python scripts/eval_checks.py at_n4 --out docs/results/eval_checks_order_at_n4.json --trials 10 --multiples 2 --no-free --no-paired
date -u
