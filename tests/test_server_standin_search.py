"""TEMPORARY stand-in for compressor.search until it lands (deleted then)."""
import json, os, time
from pathlib import Path
from compressor.errors import BudgetInfeasible, ConfigError, SearchCancelled
from compressor.events import SearchEvent

def validate(config, *, oracle=None):
    if config.model != "demo-cnn":
        raise ConfigError("model", f"{config.model!r} is unknown; choose one of demo-cnn, resnet20")
    if config.parsed_target.value < 0.05:
        raise BudgetInfeasible("too small", smallest=0.1)

def load_episode_log(out):
    p = Path(out) / "checkpoint" / "episodes.json"
    return json.loads(p.read_text()) if p.exists() else []

def run_search(config, out, *, oracle=None, on_event=None, should_stop=None, resume=False):
    out = Path(out); on_event = on_event or (lambda e: None)
    done = load_episode_log(out) if resume else []
    on_event(SearchEvent("phase", phase="search", message="searching"))
    for ep in range(len(done) + 1, config.episodes + 1):
        time.sleep(float(os.environ.get("STANDIN_SLEEP", "0.5")))
        rec = {"episode": ep, "reward": -1 + ep * 0.01, "accuracy": 0.5 + ep * 0.01, "macs": 1000 - ep, "params": 100,
               "latency_ms": None, "ratios": [0.5, 0.6, 0.7], "best_accuracy": 0.5 + ep * 0.01, "seconds": 0.5}
        done.append(rec)
        (out / "checkpoint").mkdir(exist_ok=True)
        tmp = out / "checkpoint" / "episodes.tmp"; tmp.write_text(json.dumps(done)); os.replace(tmp, out / "checkpoint" / "episodes.json")
        on_event(SearchEvent("episode", episode=ep, episodes=config.episodes, record=rec))
        if should_stop and should_stop():
            raise SearchCancelled("stop")
    import onnx
    from onnx import helper, TensorProto
    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    onnx.save(helper.make_model(g), out / "model.onnx")
    rep = {"model": config.model, "baseline": {"accuracy": 0.9, "macs": 1000}, "result": {"accuracy": 0.8, "macs": 500}}
    (out / "report.json").write_text(json.dumps(rep))
    return rep
