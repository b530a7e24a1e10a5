"""Held-out preference pairs: does the model prefer the chosen answer?

The `preference` evaluator (config.evals entry `type="preference"`; configs/common.py's
`preference`) scores every held-out pair of the run's preference tasks (their validation rows, e.g.
a pairs file's `validation_rows`) in the run's format: the summed log-probability of each answer's
tokens after the shared prompt, under the model and under its reference, the model it started
from: the base without the LoRA adapters, or in full fine-tuning train.init_from's parameters
(scored once). Per pair:
  reward accuracy      the DPO implicit reward prefers the chosen answer:
                       (pi_c - ref_c) > (pi_r - ref_r); a tie (within TIE nats, as when the
                       adapters are still zero) counts half
  likelihood accuracy  the model itself prefers it: pi_c / n_c > pi_r / n_r (per-token means)
Each with its 95% bootstrap interval over pairs (in percent), and the mean reward margin
beta ((pi_c - ref_c) - (pi_r - ref_r)), beta being loss.dpo_beta. Written to
eval/<step>/<name>/results.json; logged: eval/<name>/reward_accuracy,
eval/<name>/likelihood_accuracy and eval/<name>/reward_margin.
"""

import dataclasses
import itertools
import json

import jax
import numpy as np
from etils import epath

from flan_jax import checkpoint, lora, scoring
from flan_jax.data import pipeline, render
from flan_jax.evaluators import pairwise, zero_shot
from flan_jax.evaluators.settings import read as read_settings
from flan_jax.model import Decoder

TIE = 1e-4  # nats: reward margins closer to zero than this are ties (compilation noise)


@dataclasses.dataclass(frozen=True)
class Settings:
  """A preference entry's own keys (config.evals.<name>)."""
  max_pairs: int = 0  # the first this many held-out pairs (0: all)
  batch_size: int = 16  # rows scored together
  resamples: int = 2000  # bootstrap resamples
  seed: int = 0


def requests(tasks, tokenizer, fmt: str, max_pairs: int) -> list:
  """scoring.score_continuations requests of the tasks' validation pairs: (prompt ids, [(chosen ids,
  weights), (rejected ids, weights)]), each answer's weights on its final turn only."""
  records = (record for task in tasks for record in task.source(task.splits[1]))
  out = []
  for record in itertools.islice(records, max_pairs or None):  # only the pairs scored are encoded
    encoded = render.encode_pair(tokenizer, record["messages"], record["rejected"], fmt)
    split = zero_shot.shared_prompt_length(encoded)
    out.append((encoded[0][0][:split], [(tokens[split:], weights[split:])
                                        for tokens, weights in encoded]))
  return out


def _accuracy(outcomes: np.ndarray, settings: Settings) -> dict:
  low, high = pairwise.bootstrap_interval(outcomes,
                                          resamples=settings.resamples,
                                          seed=settings.seed)
  return {"accuracy": float(100 * outcomes.mean()), "ci_low": low, "ci_high": high}


class Preference:
  """The preference evaluator (see the module docstring and evaluators/common.py). The pairs are
  read and encoded at construction: a run without held-out pairs stops before it trains."""

  def __init__(self, context, *, name: str, **kwargs):
    self.settings = read_settings(Settings, name, kwargs)
    self.context, self.name = context, name
    data = context.config.data
    tasks = [
        t for t in pipeline.split_tasks(data)[0] if t.preference and len(t.source(t.splits[1]))
    ]
    if not tasks:
      raise ValueError(
          f"evals.{name}: the run has no held-out preference pairs (give its preference "
          "tasks validation rows: validation_rows, validation_path or validation_split)")
    self.requests = requests(tasks, context.tokenizer, data.template.format,
                             self.settings.max_pairs)
    self.counts = np.asarray([[w.sum() for _, w in answers] for _, answers in self.requests])
    self._starting_scores = None  # full fine-tuning's reference scores, once computed

  def _directory(self, step: int) -> epath.Path:
    return epath.Path(self.context.workdir) / "eval" / str(step) / self.name

  def written(self, step: int) -> bool:
    return (self._directory(step) / "results.json").exists()

  def _scores(self, params, model: Decoder) -> np.ndarray:
    config = self.context.config
    scores, _ = scoring.score_continuations(params,
                                            model,
                                            self.requests,
                                            batch_size=self.settings.batch_size,
                                            seq_len=config.data.seq_len,
                                            chunk_len=config.loss.chunk_len,
                                            mesh=self.context.mesh)
    return np.asarray(scores)  # [pairs, 2]: chosen, rejected

  def _reference_scores(self, params) -> np.ndarray:
    model = self.context.model
    if model.cfg.lora_rank:
      return self._scores(lora.split(params)[1], lora.without_adapters(model))
    if self._starting_scores is None:
      shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                            params)
      starting = checkpoint.restore_pretrained(self.context.config.train.init_from, shapes)
      self._starting_scores = self._scores(starting, model)
    return self._starting_scores

  def run(self, params, step: int) -> dict:
    context, settings = self.context, self.settings
    policy = self._scores(params, context.model)
    reference = self._reference_scores(params)
    margin = (policy[:, 0] - reference[:, 0]) - (policy[:, 1] - reference[:, 1])
    rewards = np.where(np.abs(margin) < TIE, 0.5, (margin > 0).astype(float))
    means = policy / np.maximum(self.counts, 1)
    likelihood = np.where(means[:, 0] == means[:, 1], 0.5, (means[:, 0] > means[:,
                                                                                1]).astype(float))
    result = {
        "step": step,
        "pairs": len(self.requests),
        "beta": context.config.loss.dpo_beta,
        "reward": _accuracy(rewards, settings),
        "likelihood": _accuracy(likelihood, settings),
        "reward_margin": float(context.config.loss.dpo_beta * margin.mean()),
    }
    if jax.process_index() == 0:
      out = self._directory(step)
      out.mkdir(parents=True, exist_ok=True)
      (out / "results.json").write_text(json.dumps(result, indent=1))
    return {
        f"eval/{self.name}/reward_accuracy": result["reward"]["accuracy"],
        f"eval/{self.name}/likelihood_accuracy": result["likelihood"]["accuracy"],
        f"eval/{self.name}/reward_margin": result["reward_margin"]
    }
