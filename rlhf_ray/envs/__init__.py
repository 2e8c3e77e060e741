"""Multi-turn environments and tools: the protocol a user's environment follows, tools from plain
functions, OpenEnv servers, and the episode loop that turns a prompt into a token-exact transcript
with an action mask. The generator runs episodes; the learner only sees the mask.

May import: errors, batch, process, store, config, data, models, rewards."""
