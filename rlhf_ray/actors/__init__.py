"""One plain class per role (Generator, RewardScorer, Learner, FusedPolicyHost) plus thin
`@ray.remote` wrappers in `remote.py`; data parallelism among learners (`dp`) and the learner's
adapter history. No PPO math here: that is `algo`.

May import: algo, errors, batch, process, store, config, data, models, rewards, envs."""
