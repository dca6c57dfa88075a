"""The rules: each decides over a plain snapshot and returns actions (budget, idle, restart, liveness,
spot, red flags, milestone). None talks to the network or a process; the executor acts."""
