"""PPO roles: plain classes (unit-testable without Ray) plus thin @ray.remote wrappers in remote.py."""
