"""The DDPG agent of AMC: it picks one preserve ratio per prunable layer.

Follows the official AMC code (mit-han-lab/amc, `lib/agent.py`, `lib/memory.py`, `amc_search.py`):

- actor `Linear(s,300)-ReLU-Linear(300,300)-ReLU-Linear(300,1)-Sigmoid`; critic
  `ReLU(Linear(s,300)(state) + Linear(1,300)(action)) -> Linear(300,300)-ReLU -> Linear(300,1)`;
  PyTorch's default initialisation; Adam (actor 1e-4, critic 1e-3); target networks copied at start
  and soft-updated with tau = 0.01 after every update; batch 64; discount 1.
- Warm-up episodes take uniform random actions; afterwards the action is drawn from a normal
  distribution centred on the actor's output, with sigma = init_delta * delta_decay^(episode - warmup),
  truncated to the action interval (the official code calls `scipy.stats.truncnorm.rvs`; we sample the
  same distribution by inverting its CDF).
- Every transition of an episode is stored with the episode's final reward. The reward baseline is
  the official one: it is *not* subtracted when storing. At every update the mean reward of the
  sampled batch moves the baseline, `baseline = decay * baseline + (1 - decay) * batch_mean` (the
  first batch sets it), and the batch's rewards minus the baseline are the critic's targets.
  The official code uses `moving_alpha = 0.5`, i.e. `baseline_decay = 0.5`, our default.
- The batch is drawn uniformly with replacement from the replay buffer, as keras-rl's
  `SequentialMemory` that AMC uses does.

Differences from the official code, on purpose:
- Actions live in `[a_min, a_max]`: the actor's sigmoid is mapped affinely onto that interval and the
  exploration noise is truncated to it. The official agent acts in [0, 1] and the environment clips
  to its lower bound; with a plain sigmoid truncated to [a_min, a_max] the actor drifts below a_min,
  where the critic has seen no action and its gradient is extrapolation (on a 3-layer toy problem
  whose optimum is 0.35, 300 episodes, a layer ended stuck at a_min = 0.2 in 2 of 10 seeds, 4 of 6
  with delta_decay = 0.98; with the mapping in none of 10).
- Warm-up is `episode < warmup` (the official loop uses `<=`, one extra random episode).
- Every random draw comes from the agent's own `numpy.random.Generator` and `torch.Generator` (the
  global RNGs are left untouched), so a search is reproducible from its seed and resumable
  bit-identically from `state_dict()`.

The caller stores, per step, the action the agent proposed; the official loop stores that proposal
(before the environment's action wall), so the critic learns Q of proposals.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any

import numpy as np
import torch
from torch import nn

from compressor.errors import AmcError, ConfigError

log = logging.getLogger(__name__)

Transition = tuple[np.ndarray, float, np.ndarray, bool]

_STATE_FORMAT = "amc-ddpg-agent/1"
_STANDARD_NORMAL = NormalDist()


class AgentStateError(AmcError, ValueError):
    """A state given to the agent (an observation, or a saved `state_dict`) does not fit it."""


@dataclass(frozen=True)
class AgentConfig:
    """Hyper-parameters of the DDPG agent; the defaults are the official AMC ones."""

    hidden: int = 300
    actor_lr: float = 1e-4
    critic_lr: float = 1e-3
    tau: float = 0.01
    batch_size: int = 64
    discount: float = 1.0
    warmup: int = 100
    init_delta: float = 0.5
    delta_decay: float = 0.95
    memory_size: int | None = None  # None: 100 x number of prunable layers
    baseline_decay: float = 0.5  # official `moving_alpha = 0.5`
    a_min: float = 0.2
    a_max: float = 1.0
    # Exploration prior (ours, not in AMC): when set, warm-up actions are drawn around it with
    # sigma `prior_sigma` instead of uniformly, the actor starts out proposing it, and exploration
    # noise after warm-up starts at `prior_sigma`. The search sets it to the uniform policy's ratio.
    prior: float | None = None
    prior_sigma: float = 0.15

    def __post_init__(self) -> None:
        def check(name: str, ok: bool, expected: str) -> None:
            if not ok:
                raise ConfigError(name, f"must be {expected}, got {getattr(self, name)!r}")

        def is_int(value: Any) -> bool:
            return isinstance(value, int | np.integer) and not isinstance(value, bool)

        def finite(value: Any) -> bool:
            return isinstance(value, int | float | np.number) and math.isfinite(float(value))

        check("hidden", is_int(self.hidden) and self.hidden >= 1, "a positive integer (official AMC: 300)")
        check("actor_lr", finite(self.actor_lr) and self.actor_lr > 0, "a positive number (official: 1e-4)")
        check("critic_lr", finite(self.critic_lr) and self.critic_lr > 0, "a positive number (official: 1e-3)")
        check("tau", finite(self.tau) and 0 < self.tau <= 1, "in (0, 1] (official: 0.01)")
        check("batch_size", is_int(self.batch_size) and self.batch_size >= 1, "a positive integer (official: 64)")
        check("discount", finite(self.discount) and 0 <= self.discount <= 1, "in [0, 1] (official: 1)")
        check("warmup", is_int(self.warmup) and self.warmup >= 0, "an integer >= 0 (official: 100)")
        check("init_delta", finite(self.init_delta) and self.init_delta > 0, "a positive number (official: 0.5)")
        check("delta_decay", finite(self.delta_decay) and 0 < self.delta_decay <= 1, "in (0, 1] (official: 0.95)")
        check("memory_size", self.memory_size is None or (is_int(self.memory_size) and self.memory_size >= 1),
              "None (100 x number of layers) or a positive integer")
        check("baseline_decay", finite(self.baseline_decay) and 0 <= self.baseline_decay < 1,
              "in [0, 1) (official: 0.5)")
        # 0 is allowed: where whole blocks may be removed, the agent's lowest actions mean "remove".
        check("a_min", finite(self.a_min) and 0 <= self.a_min <= 1, "in [0, 1] (the smallest preserve ratio)")
        check("a_max", finite(self.a_max) and 0 < self.a_max <= 1, "in (0, 1] (the largest preserve ratio)")
        if self.a_min > self.a_max:
            raise ConfigError("a_min", f"{self.a_min} is larger than a_max={self.a_max}; need a_min <= a_max")
        check("prior", self.prior is None or (finite(self.prior) and self.a_min <= self.prior <= self.a_max),
              "None or a preserve ratio in [a_min, a_max]")
        check("prior_sigma", finite(self.prior_sigma) and self.prior_sigma > 0, "a positive number")


class Actor(nn.Module):
    """State -> preserve ratio in (0, 1)."""

    def __init__(self, state_dim: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(state_dim, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, 1), nn.Sigmoid(),
        )

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return self.net(state)


class Critic(nn.Module):
    """(state, action) -> Q; state and action enter the first hidden layer through separate
    linear maps whose outputs are summed, as in the official code."""

    def __init__(self, state_dim: int, hidden: int):
        super().__init__()
        self.fc_state = nn.Linear(state_dim, hidden)
        self.fc_action = nn.Linear(1, hidden)
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc_state(state) + self.fc_action(action))


def _init_linear_(module: nn.Module, generator: torch.Generator) -> None:
    # PyTorch's default Linear init (kaiming_uniform with a=sqrt(5) == U(+-1/sqrt(fan_in)) for the
    # weight, the same bound for the bias), drawn from our own generator instead of the global one.
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, nn.Linear):
                bound = 1.0 / math.sqrt(layer.in_features)
                layer.weight.uniform_(-bound, bound, generator=generator)
                layer.bias.uniform_(-bound, bound, generator=generator)


def _ndtr(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def sample_truncated_normal(rng: np.random.Generator, *, mean: float, sigma: float, low: float,
                            high: float) -> float:
    """One draw of N(mean, sigma^2) truncated to [low, high], by inverting the truncated CDF with
    one uniform from `rng` (the distribution of `scipy.stats.truncnorm`). Works in the lower tail of
    the normal, where its CDF keeps precision, and falls back to the bound nearest the mean when the
    interval lies so far out that its probability underflows (the distribution is concentrated there)."""
    if not low <= high:
        raise ValueError(f"need low <= high, got [{low}, {high}]")
    u = float(rng.random())
    if not sigma > 0 or not math.isfinite(sigma):
        return float(min(max(mean, low), high))
    alpha, beta = (low - mean) / sigma, (high - mean) / sigma
    mirrored = alpha > 0  # whole interval above the mean: mirror it into the lower tail
    if mirrored:
        alpha, beta = -beta, -alpha
    p_low, p_high = _ndtr(alpha), _ndtr(beta)
    if p_high - p_low <= 0.0:
        z = beta
    else:
        p = p_low + u * (p_high - p_low)
        if p <= 0.0:
            z = alpha
        elif p >= 1.0:
            z = beta
        else:
            z = min(max(_STANDARD_NORMAL.inv_cdf(p), alpha), beta)
    if mirrored:
        z = -z
    return float(min(max(mean + sigma * z, low), high))


class DDPGAgent:
    """DDPG over layer-wise states as in AMC; owns its replay buffer, baseline and random state."""

    def __init__(self, *, state_dim: int, config: AgentConfig, n_layers: int, seed: int):
        if not isinstance(state_dim, int) or state_dim < 1:
            raise ConfigError("state_dim", f"must be a positive integer, got {state_dim!r}")
        if not isinstance(n_layers, int) or n_layers < 1:
            raise ConfigError("n_layers", f"must be a positive integer (prunable layers), got {n_layers!r}")
        self.state_dim = state_dim
        self.config = config
        self.n_layers = n_layers
        self.seed = int(seed)
        self.capacity = config.memory_size if config.memory_size is not None else 100 * n_layers

        self.rng = np.random.default_rng(self.seed)
        self.torch_gen = torch.Generator().manual_seed(self.seed)

        with torch.random.fork_rng(devices=[]):  # nn.Linear's own init draws from the global RNG
            self.actor = Actor(state_dim, config.hidden)
            self.critic = Critic(state_dim, config.hidden)
        _init_linear_(self.actor, self.torch_gen)
        _init_linear_(self.critic, self.torch_gen)
        if config.prior is not None:
            self._start_actor_at(config.prior)
        self.actor_target = copy.deepcopy(self.actor)  # hard copy at start
        self.critic_target = copy.deepcopy(self.critic)
        for target in (self.actor_target, self.critic_target):
            target.requires_grad_(False)
        self.actor_optim = torch.optim.Adam(self.actor.parameters(), lr=config.actor_lr)
        self.critic_optim = torch.optim.Adam(self.critic.parameters(), lr=config.critic_lr)

        self._states = torch.zeros(self.capacity, state_dim)
        self._actions = torch.zeros(self.capacity, 1)
        self._rewards = torch.zeros(self.capacity, 1)
        self._next_states = torch.zeros(self.capacity, state_dim)
        self._dones = torch.zeros(self.capacity, 1)
        self._position = 0  # next slot to write (ring buffer)
        self._size = 0
        self.baseline: float | None = None  # moving average of sampled batch rewards
        self.updates = 0
        log.debug("DDPG agent: state_dim=%d, n_layers=%d, replay buffer %d, %s",
                  state_dim, n_layers, self.capacity, config)

    def _start_actor_at(self, ratio: float) -> None:
        """Make the actor propose `ratio` in every state: tiny last-layer weights (as the official
        code's 3e-3 init) and the bias at the sigmoid's inverse of `ratio`."""
        cfg = self.config
        p = (ratio - cfg.a_min) / max(cfg.a_max - cfg.a_min, 1e-9)
        p = min(max(p, 0.01), 0.99)
        last = self.actor.net[-2]
        assert isinstance(last, nn.Linear)
        with torch.no_grad():
            last.weight.uniform_(-3e-3, 3e-3, generator=self.torch_gen)
            last.bias.fill_(math.log(p / (1 - p)))

    # ----------------------------------------------------------------------------------- acting
    def noise_sigma(self, episode: int) -> float:
        """Exploration sigma after warm-up: init_delta (or prior_sigma) * delta_decay^(episode - warmup)."""
        cfg = self.config
        start = cfg.prior_sigma if cfg.prior is not None else cfg.init_delta
        return start * cfg.delta_decay ** max(episode - cfg.warmup, 0)

    def select_action(self, state: np.ndarray, *, episode: int) -> float:
        """The preserve ratio to take in `state` during training episode `episode` (0-based)."""
        cfg = self.config
        if episode < cfg.warmup:
            if cfg.prior is not None:
                return sample_truncated_normal(self.rng, mean=cfg.prior, sigma=cfg.prior_sigma,
                                               low=cfg.a_min, high=cfg.a_max)
            return float(self.rng.uniform(cfg.a_min, cfg.a_max))
        mean = self._actor_output(state)
        return sample_truncated_normal(self.rng, mean=mean, sigma=self.noise_sigma(episode),
                                       low=cfg.a_min, high=cfg.a_max)

    def greedy_action(self, state: np.ndarray) -> float:
        """The actor's preserve ratio without exploration noise, clipped to [a_min, a_max]."""
        return float(min(max(self._actor_output(state), self.config.a_min), self.config.a_max))

    def _actor_output(self, state: np.ndarray) -> float:
        with torch.no_grad():
            return float(self._policy(self.actor, self._state_tensor(state).unsqueeze(0)).item())

    def _policy(self, actor: Actor, states: torch.Tensor) -> torch.Tensor:
        # The sigmoid's (0, 1) is mapped onto [a_min, a_max] so that the actor never proposes a
        # ratio the critic has never seen (below a_min its Q would be pure extrapolation).
        cfg = self.config
        return cfg.a_min + (cfg.a_max - cfg.a_min) * actor(states)

    def _state_tensor(self, state: np.ndarray) -> torch.Tensor:
        arr = np.asarray(state, dtype=np.float32).reshape(-1)
        if arr.shape[0] != self.state_dim:
            raise AgentStateError(f"state has {arr.shape[0]} features, the agent expects {self.state_dim}")
        if not np.isfinite(arr).all():
            raise AgentStateError(f"state has non-finite features: {arr.tolist()}")
        return torch.from_numpy(arr.copy())

    # ----------------------------------------------------------------------------------- learning
    @property
    def memory_len(self) -> int:
        """Transitions held in the replay buffer."""
        return self._size

    def observe(self, episode_transitions: list[Transition], reward: float) -> None:
        """Store every (state, action, next_state, done) of a finished episode with its final reward."""
        if not math.isfinite(float(reward)):
            raise AgentStateError(f"episode reward must be finite, got {reward!r}")
        for i, (state, action, next_state, done) in enumerate(episode_transitions):
            if not math.isfinite(float(action)):
                raise AgentStateError(f"transition {i}: action must be finite, got {action!r}")
            slot = self._position
            self._states[slot] = self._state_tensor(state)
            self._next_states[slot] = self._state_tensor(next_state)
            self._actions[slot, 0] = float(action)
            self._rewards[slot, 0] = float(reward)
            self._dones[slot, 0] = 1.0 if done else 0.0
            self._position = (slot + 1) % self.capacity
            self._size = min(self._size + 1, self.capacity)

    def update(self) -> tuple[float, float] | None:
        """One DDPG step on a sampled batch; (critic_loss, actor_loss), or None while the replay
        buffer holds fewer than batch_size transitions."""
        cfg = self.config
        if self._size < cfg.batch_size:
            return None
        idx = torch.from_numpy(self.rng.integers(0, self._size, size=cfg.batch_size))
        states, actions = self._states[idx], self._actions[idx]
        rewards, next_states, dones = self._rewards[idx], self._next_states[idx], self._dones[idx]

        batch_mean = float(rewards.mean())
        if self.baseline is None:
            self.baseline = batch_mean
        else:
            self.baseline = cfg.baseline_decay * self.baseline + (1.0 - cfg.baseline_decay) * batch_mean
        rewards = rewards - self.baseline

        with torch.no_grad():
            next_q = self.critic_target(next_states, self._policy(self.actor_target, next_states))
            target_q = rewards + cfg.discount * (1.0 - dones) * next_q

        self.critic_optim.zero_grad()
        critic_loss = nn.functional.mse_loss(self.critic(states, actions), target_q)
        critic_loss.backward()
        self.critic_optim.step()

        self.actor_optim.zero_grad()
        actor_loss = -self.critic(states, self._policy(self.actor, states)).mean()
        actor_loss.backward()
        self.actor_optim.step()
        self.critic_optim.zero_grad()  # the actor's backward left gradients in the critic

        with torch.no_grad():
            for target, source in ((self.actor_target, self.actor), (self.critic_target, self.critic)):
                for t, s in zip(target.parameters(), source.parameters(), strict=True):
                    t.mul_(1.0 - cfg.tau).add_(s, alpha=cfg.tau)
        self.updates += 1
        return float(critic_loss.detach()), float(actor_loss.detach())

    # ----------------------------------------------------------------------------------- resuming
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue bit-identically; plain tensors, numbers, strings, lists and
        dicts, so `torch.load(path, weights_only=True)` reads it back."""

        def clone(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return {k: v.detach().clone() for k, v in sd.items()}

        return {
            "format": _STATE_FORMAT,
            "state_dim": self.state_dim,
            "n_layers": self.n_layers,
            "seed": self.seed,
            "config": asdict(self.config),
            "actor": clone(self.actor.state_dict()),
            "critic": clone(self.critic.state_dict()),
            "actor_target": clone(self.actor_target.state_dict()),
            "critic_target": clone(self.critic_target.state_dict()),
            "actor_optim": copy.deepcopy(self.actor_optim.state_dict()),
            "critic_optim": copy.deepcopy(self.critic_optim.state_dict()),
            "memory": {
                "states": self._states.clone(),
                "actions": self._actions.clone(),
                "rewards": self._rewards.clone(),
                "next_states": self._next_states.clone(),
                "dones": self._dones.clone(),
                "position": self._position,
                "size": self._size,
            },
            "baseline": self.baseline,
            "updates": self.updates,
            "numpy_rng": copy.deepcopy(self.rng.bit_generator.state),
            "torch_rng": self.torch_gen.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict()` returned, from an agent built with the same shape."""
        if not isinstance(state, dict) or state.get("format") != _STATE_FORMAT:
            raise AgentStateError(f"not a DDPG agent state (expected format {_STATE_FORMAT!r}); "
                                  "was the checkpoint written by another version or another component?")
        mine = {"state_dim": self.state_dim, "n_layers": self.n_layers, "capacity": self.capacity,
                "hidden": self.config.hidden}
        theirs = {"state_dim": state["state_dim"], "n_layers": state["n_layers"],
                  "capacity": int(state["memory"]["states"].shape[0]), "hidden": state["config"]["hidden"]}
        if mine != theirs:
            raise AgentStateError(f"saved agent has {theirs}, this agent has {mine}; build the agent with "
                                  "the same state_dim, n_layers and AgentConfig to resume")
        if asdict(self.config) != state["config"]:
            log.warning("resuming an agent saved with config %s under config %s", state["config"],
                        asdict(self.config))
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.actor_target.load_state_dict(state["actor_target"])
        self.critic_target.load_state_dict(state["critic_target"])
        self.actor_optim.load_state_dict(state["actor_optim"])
        self.critic_optim.load_state_dict(state["critic_optim"])
        memory = state["memory"]
        self._states.copy_(memory["states"])
        self._actions.copy_(memory["actions"])
        self._rewards.copy_(memory["rewards"])
        self._next_states.copy_(memory["next_states"])
        self._dones.copy_(memory["dones"])
        self._position = int(memory["position"])
        self._size = int(memory["size"])
        self.baseline = None if state["baseline"] is None else float(state["baseline"])
        self.updates = int(state["updates"])
        self.rng.bit_generator.state = copy.deepcopy(state["numpy_rng"])
        self.torch_gen.set_state(state["torch_rng"])
