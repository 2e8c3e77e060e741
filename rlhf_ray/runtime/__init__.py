"""Running a PPO job: the driver loop, the role layout and the Roles that start actors in a
placement group, the memory plan, the learner group, recovery, overlapped rollouts, pre-flight
checks, metrics and run directories.

May import everything below it (actors and down); never stages, tools, bench or the CLI."""
