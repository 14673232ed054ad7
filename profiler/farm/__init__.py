"""The phone farm across machines, on Ray. Each USB host runs `amc device-host`, which serves every phone
it finds as a named Ray actor (`host`); the orchestrator and the CLI find, lease and measure on those
phones through `client` when `AMC_RAY_ADDRESS` (or `--ray`) names the cluster.

Nothing here imports Ray at module level: the embedded default (one machine, no cluster) never loads it.
`names` (addresses, actor names, model specs) and `phone` (what a phone actor does) are plain Python."""
