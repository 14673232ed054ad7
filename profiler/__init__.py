"""Latency truth: devices (local CPU, ADB over USB/TCP), device pool, measurement protocol,
result cache, per-device latency lookup tables and parsers for stock benchmark tools.

Map of the package (each layer only looks down; of the search it imports only compressor's public
interfaces: `latency`, `kernel_space`, `ops`, `export`, `errors`, `fileio`; never the zoo, which
server/profiler_cli.py hands to `cli`):

- `protocol`   `MeasureConfig` (threads, warm-up, runs, CPU mask, cool-down) and `Measurement`.
- `devices/`   `Device` ABC and the `DEVICE_KINDS` registry: `local` (the agent as a subprocess),
               `adb:HOST:PORT` / `adb:SERIAL` (adb-shell; agent and models pushed once, by hash);
               `parse_device_spec`, `open_device`; `keys` (the host's ADB RSA key, 0600).
- `benchmark_model`  driver and parser for the stock TFLite `benchmark_model` binary.
- `devices/identity`  `DeviceIdentity`: what a device is (model, build, runtimes, agent; serial apart),
               the key of its cached measurements and lookup tables, never its address.
- `cache`      SQLite (WAL) cache keyed by device identity, runtime, threads, CPU mask and model sha256;
               `measure.measure(device, path, config, cache=...)` goes through it.
- `pool`       `DevicePool`: leasing, retries on another device, quarantine, deadlines.
- `registry`   registered TCP devices and `discover()` for `amc devices`.
- `kernels`    fused kernels of a PyTorch model (layers as `compressor.ops` maps them), single-kernel
               models for timing.
- `lut/`       lookup tables, in layers: `keys` (kernel, structure and family keys), `calibration`,
               `table` (`LatencyTable`: interpolation, prediction, `observe`, files), `space` (what to
               time, from `compressor.kernel_space`), then `build` (`build_lut`) and `check` (`check_lut`);
               `profiler.lut` re-exports them all.
- `oracle`     `LutOracle` (compressor.latency.LatencyOracle) and `make_oracle(device_spec, ...)`.
- `cli`        `amc bench`, `amc devices`, `amc lut build|check` (model names through the `load_model`
               its composer passes: `server.profiler_cli`).
"""
