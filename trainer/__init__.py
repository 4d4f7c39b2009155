"""LoRA trainer on packed shards: `train_main` / `eval_main` (CLI entries), `train`, `score_pool`.

Modules: config (TrainConfig), model (load + LoRA), data (shards -> batches), losses (token
losses on packed rows), schedule (lr as a pure function), loop (the training loop), evaluate
(eval.json and the feedback scoring pass), cli, tiny (local tokenizer + tiny model).
"""
