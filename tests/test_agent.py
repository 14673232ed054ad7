"""The DDPG agent: bounded actions, decaying exploration, determinism, bit-identical resume through
`torch.save`/`torch.load(weights_only=True)`, and that it learns small layer-wise problems."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from compressor.agent import AgentConfig, AgentStateError, DDPGAgent, sample_truncated_normal
from compressor.errors import ConfigError

SMALL = AgentConfig(hidden=32, warmup=5, batch_size=8)


@pytest.fixture(autouse=True)
def _one_thread():
    # The networks are tiny: a second thread only adds synchronisation on a busy 2-core machine.
    torch.set_num_threads(1)


class LayerwiseToy:
    """T layers, one preserve ratio each; the reward is highest when every ratio equals `target`.
    State: one-hot layer index plus the previous action, like AMC's (t, ..., a_{t-1})."""

    def __init__(self, n_layers: int, target: float):
        self.n_layers = n_layers
        self.target = target
        self.state_dim = n_layers + 1

    def state(self, t: int, prev: float) -> np.ndarray:
        s = np.zeros(self.state_dim, dtype=np.float32)
        if t < self.n_layers:
            s[t] = 1.0
        s[-1] = prev
        return s

    def reward(self, actions: list[float]) -> float:
        return -float(np.sum((np.asarray(actions) - self.target) ** 2))

    def episode(self, act) -> tuple[list, list[float], float]:
        prev, transitions, actions = 1.0, [], []
        for t in range(self.n_layers):
            s = self.state(t, prev)
            a = act(s)
            transitions.append((s, a, self.state(t + 1, a), t == self.n_layers - 1))
            actions.append(a)
            prev = a
        return transitions, actions, self.reward(actions)


def train(agent: DDPGAgent, env: LayerwiseToy, episodes: range) -> tuple[list[float], list]:
    """The caller's loop as the search runs it: act, observe the episode, then n_layers updates."""
    actions_log, losses = [], []
    for ep in episodes:
        transitions, actions, reward = env.episode(lambda s, ep=ep: agent.select_action(s, episode=ep))
        agent.observe(transitions, reward)
        actions_log += actions
        if ep >= agent.config.warmup:
            losses += [agent.update() for _ in range(env.n_layers)]
    return actions_log, losses


def greedy_policy(agent: DDPGAgent, env: LayerwiseToy) -> list[float]:
    return env.episode(agent.greedy_action)[1]


# ---------------------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    ("field", "value"),
    [("hidden", 0), ("actor_lr", 0.0), ("critic_lr", -1.0), ("tau", 1.5), ("batch_size", 0),
     ("discount", 1.2), ("warmup", -1), ("init_delta", 0.0), ("delta_decay", 1.1), ("memory_size", 0),
     ("baseline_decay", 1.0), ("a_min", -0.1), ("a_max", 1.5), ("actor_lr", float("nan"))],
)
def test_config_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(ConfigError) as info:
        AgentConfig(**{field: value})
    assert info.value.field == field
    assert repr(value) in str(info.value) or str(value) in str(info.value)


def test_config_rejects_a_min_above_a_max():
    with pytest.raises(ConfigError, match="a_min"):
        AgentConfig(a_min=0.8, a_max=0.5)


def test_defaults_are_the_official_amc_ones():
    cfg = AgentConfig()
    assert (cfg.hidden, cfg.actor_lr, cfg.critic_lr, cfg.tau, cfg.batch_size, cfg.discount) == (
        300, 1e-4, 1e-3, 0.01, 64, 1.0)
    assert (cfg.warmup, cfg.init_delta, cfg.delta_decay, cfg.a_min, cfg.a_max) == (100, 0.5, 0.95, 0.2, 1.0)
    agent = DDPGAgent(state_dim=11, config=cfg, n_layers=7, seed=0)
    assert agent.capacity == 700  # 100 x prunable layers
    sizes = [p.shape for p in agent.actor.parameters()]
    assert sizes == [(300, 11), (300,), (300, 300), (300,), (1, 300), (1,)]
    assert sum(p.numel() for p in agent.critic.parameters()) == 11 * 300 + 300 + 300 + 300 + 300 * 300 + 300 + 301


# ---------------------------------------------------------------------------------------- acting
def test_actions_stay_within_bounds_in_warmup_and_after():
    cfg = replace(SMALL, a_min=0.3, a_max=0.9, warmup=20)
    env = LayerwiseToy(3, target=0.35)
    agent = DDPGAgent(state_dim=env.state_dim, config=cfg, n_layers=3, seed=1)
    actions, _ = train(agent, env, range(120))
    assert min(actions) >= 0.3 and max(actions) <= 0.9
    warm = actions[: 20 * 3]
    assert min(warm) < 0.4 and max(warm) > 0.8  # uniform over the whole interval during warm-up
    rng_state = np.random.default_rng(5)
    for ep in (20, 21, 50, 500, 10_000):  # late episodes: sigma underflows to 0
        for _ in range(20):
            s = rng_state.uniform(-5, 5, env.state_dim).astype(np.float32)
            assert 0.3 <= agent.select_action(s, episode=ep) <= 0.9
            assert 0.3 <= agent.greedy_action(s) <= 0.9


def test_truncated_normal_stays_inside_and_has_the_right_mean():
    rng = np.random.default_rng(0)
    mean, sigma, low, high = 0.3, 0.5, 0.2, 1.0
    draws = np.array([sample_truncated_normal(rng, mean=mean, sigma=sigma, low=low, high=high)
                      for _ in range(20_000)])
    assert draws.min() >= low and draws.max() <= high
    alpha, beta = (low - mean) / sigma, (high - mean) / sigma
    pdf = lambda x: math.exp(-x * x / 2) / math.sqrt(2 * math.pi)  # noqa: E731
    cdf = lambda x: 0.5 * math.erfc(-x / math.sqrt(2))  # noqa: E731
    expected = mean + sigma * (pdf(alpha) - pdf(beta)) / (cdf(beta) - cdf(alpha))
    assert abs(draws.mean() - expected) < 0.01


@pytest.mark.parametrize(("mean", "sigma", "nearest"), [(-3.0, 1e-3, 0.2), (5.0, 1e-4, 1.0), (0.05, 1e-9, 0.2)])
def test_truncated_normal_far_outside_the_interval_lands_at_the_nearest_bound(mean, sigma, nearest):
    rng = np.random.default_rng(0)
    draws = [sample_truncated_normal(rng, mean=mean, sigma=sigma, low=0.2, high=1.0) for _ in range(50)]
    assert all(0.2 <= d <= 1.0 for d in draws)
    assert max(abs(d - nearest) for d in draws) < 1e-2


def test_exploration_noise_decays():
    cfg = replace(SMALL, warmup=10)
    agent = DDPGAgent(state_dim=4, config=cfg, n_layers=1, seed=0)
    sigmas = [agent.noise_sigma(ep) for ep in range(10, 80)]
    assert sigmas[0] == pytest.approx(0.5)
    assert sigmas[20] == pytest.approx(0.5 * 0.95**20)
    assert all(a > b for a, b in zip(sigmas, sigmas[1:], strict=False))
    state = np.full(4, 0.5, dtype=np.float32)
    spread = {ep: np.std([agent.select_action(state, episode=ep) for _ in range(400)]) for ep in (10, 40, 80)}
    assert spread[10] > 2 * spread[40] > 4 * spread[80]
    assert spread[80] < 0.05


def test_same_seed_same_actions_and_losses_other_seed_differs():
    env = LayerwiseToy(2, target=0.5)

    def run(seed):
        agent = DDPGAgent(state_dim=env.state_dim, config=SMALL, n_layers=2, seed=seed)
        return train(agent, env, range(30))

    a1, l1 = run(7)
    a2, l2 = run(7)
    a3, _ = run(8)
    assert a1 == a2 and l1 == l2
    assert any(loss is not None for loss in l1)
    assert a1 != a3


def test_agent_leaves_global_random_state_alone():
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()
    env = LayerwiseToy(2, target=0.5)
    train(DDPGAgent(state_dim=env.state_dim, config=SMALL, n_layers=2, seed=3), env, range(20))
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.random.get_state()[1].tolist() == np_state[1].tolist()


# ---------------------------------------------------------------------------------------- learning
def test_update_waits_for_a_full_batch_and_buffer_wraps():
    cfg = replace(SMALL, batch_size=6, memory_size=10)
    env = LayerwiseToy(2, target=0.5)
    agent = DDPGAgent(state_dim=env.state_dim, config=cfg, n_layers=2, seed=0)
    for _ in range(2):
        agent.observe(env.episode(lambda s: 0.5)[0], reward=-1.0)
    assert agent.memory_len == 4 and agent.update() is None
    for _ in range(10):
        agent.observe(env.episode(lambda s: 0.5)[0], reward=-1.0)
    assert agent.memory_len == 10
    critic_loss, actor_loss = agent.update()
    assert math.isfinite(critic_loss) and math.isfinite(actor_loss)


def test_baseline_follows_sampled_batch_rewards_as_the_official_code():
    cfg = replace(SMALL, batch_size=4, memory_size=4, baseline_decay=0.5)
    env = LayerwiseToy(2, target=0.5)
    agent = DDPGAgent(state_dim=env.state_dim, config=cfg, n_layers=2, seed=0)
    for _ in range(2):
        agent.observe(env.episode(lambda s: 0.5)[0], reward=-0.4)
    assert agent.baseline is None
    agent.update()
    assert agent.baseline == pytest.approx(-0.4)  # the first batch sets it
    for _ in range(2):  # the buffer now holds only -0.2 rewards
        agent.observe(env.episode(lambda s: 0.5)[0], reward=-0.2)
    agent.update()
    assert agent.baseline == pytest.approx(0.5 * -0.4 + 0.5 * -0.2)
    agent.update()
    assert agent.baseline == pytest.approx(0.5 * -0.3 + 0.5 * -0.2)


def test_soft_target_update_moves_targets_by_tau():
    cfg = replace(SMALL, tau=0.25)
    env = LayerwiseToy(1, target=0.5)
    agent = DDPGAgent(state_dim=env.state_dim, config=cfg, n_layers=1, seed=0)
    assert all(torch.equal(t, s) for t, s in zip(agent.actor_target.parameters(), agent.actor.parameters(),
                                                  strict=True))
    for _ in range(8):
        agent.observe(env.episode(lambda s: 0.4)[0], reward=-0.1)
    before = [p.clone() for p in agent.critic_target.parameters()]
    agent.update()
    for old, target, source in zip(before, agent.critic_target.parameters(), agent.critic.parameters(),
                                   strict=True):
        torch.testing.assert_close(target, 0.75 * old + 0.25 * source)


def test_learns_a_one_step_problem():
    env = LayerwiseToy(1, target=0.7)
    cfg = AgentConfig(hidden=64, warmup=50)
    agent = DDPGAgent(state_dim=env.state_dim, config=cfg, n_layers=1, seed=0)
    start = greedy_policy(agent, env)[0]
    train(agent, env, range(300))
    learned = greedy_policy(agent, env)[0]
    assert abs(learned - 0.7) < 0.1
    assert abs(learned - 0.7) < abs(start - 0.7) / 2


def test_learns_a_three_layer_problem():
    env = LayerwiseToy(3, target=0.35)
    cfg = AgentConfig(hidden=64, warmup=50)
    agent = DDPGAgent(state_dim=env.state_dim, config=cfg, n_layers=3, seed=2)
    train(agent, env, range(300))
    policy = np.array(greedy_policy(agent, env))
    assert np.abs(policy - 0.35).mean() < 0.1
    # random search's average reward over [0.2, 1] is about -0.35 on this problem
    assert env.reward(list(policy)) > -0.05


# ---------------------------------------------------------------------------------------- resume
def test_resume_through_torch_save_is_bit_identical(tmp_path):
    env = LayerwiseToy(3, target=0.35)
    cfg = replace(SMALL, warmup=10, memory_size=40)

    uninterrupted = DDPGAgent(state_dim=env.state_dim, config=cfg, n_layers=3, seed=11)
    a_first, l_first = train(uninterrupted, env, range(0, 25))
    a_rest, l_rest = train(uninterrupted, env, range(25, 45))

    first = DDPGAgent(state_dim=env.state_dim, config=cfg, n_layers=3, seed=11)
    assert train(first, env, range(0, 25)) == (a_first, l_first)
    torch.save(first.state_dict(), tmp_path / "agent.pt")
    del first

    resumed = DDPGAgent(state_dim=env.state_dim, config=cfg, n_layers=3, seed=999)  # seed is restored
    resumed.load_state_dict(torch.load(tmp_path / "agent.pt", weights_only=True))
    assert train(resumed, env, range(25, 45)) == (a_rest, l_rest)
    assert all(loss is not None for loss in l_rest)
    state = np.full(env.state_dim, 0.3, dtype=np.float32)
    assert resumed.greedy_action(state) == uninterrupted.greedy_action(state)


def test_state_dict_is_a_snapshot():
    env = LayerwiseToy(2, target=0.5)
    agent = DDPGAgent(state_dim=env.state_dim, config=SMALL, n_layers=2, seed=0)
    train(agent, env, range(8))
    snapshot = agent.state_dict()
    weights = snapshot["actor"]["net.0.weight"].clone()
    train(agent, env, range(8, 20))
    assert torch.equal(snapshot["actor"]["net.0.weight"], weights)


def test_load_rejects_state_of_another_shape():
    agent = DDPGAgent(state_dim=5, config=SMALL, n_layers=2, seed=0)
    other = DDPGAgent(state_dim=6, config=SMALL, n_layers=2, seed=0)
    with pytest.raises(AgentStateError, match="state_dim"):
        agent.load_state_dict(other.state_dict())
    with pytest.raises(AgentStateError, match="not a DDPG agent state"):
        agent.load_state_dict({"actor": {}})


def test_bad_observations_are_rejected_with_the_reason():
    agent = DDPGAgent(state_dim=5, config=SMALL, n_layers=2, seed=0)
    with pytest.raises(AgentStateError, match="5"):
        agent.select_action(np.zeros(4), episode=10)
    with pytest.raises(AgentStateError, match="non-finite"):
        agent.greedy_action(np.array([0, 0, np.nan, 0, 0]))
    with pytest.raises(AgentStateError, match="reward"):
        agent.observe([(np.zeros(5), 0.5, np.zeros(5), True)], reward=float("inf"))


def test_prior_centres_warmup_and_the_initial_actor():
    """With a prior, warm-up explores around it and the untrained actor already proposes it."""
    config = AgentConfig(warmup=50, a_min=0.2, prior=0.4, prior_sigma=0.1, hidden=32)
    agent = DDPGAgent(state_dim=11, config=config, n_layers=5, seed=0)
    warm = [agent.select_action(np.random.default_rng(i).random(11), episode=0) for i in range(400)]
    assert all(0.2 <= a <= 1.0 for a in warm)
    assert abs(float(np.mean(warm)) - 0.4) < 0.03
    assert 0.07 < float(np.std(warm)) < 0.12
    greedy = [agent.greedy_action(np.random.default_rng(100 + i).random(11)) for i in range(20)]
    assert max(abs(g - 0.4) for g in greedy) < 0.01
    assert agent.noise_sigma(50) == pytest.approx(0.1)
    plain = DDPGAgent(state_dim=11, config=AgentConfig(warmup=50, hidden=32), n_layers=5, seed=0)
    assert float(np.std([plain.select_action(np.zeros(11), episode=0) for _ in range(400)])) > 0.2


def test_prior_must_be_a_ratio_in_range():
    with pytest.raises(ConfigError) as info:
        AgentConfig(prior=0.1, a_min=0.2)
    assert info.value.field == "prior"
