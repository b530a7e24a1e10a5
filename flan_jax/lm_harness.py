"""flan_jax models in EleutherAI's lm-evaluation-harness: the `flan_jax` model class, registered
with the harness when this module is imported, and `evaluate`, which `python -m flan_jax.harness`
runs.

The class follows the harness's Hugging Face backend (`hf`) request by request, so the same task
gives the same numbers through both: text is tokenized as that backend tokenizes it (the
tokenizer's BOS unless the text starts with it, contexts left-truncated to `max_length`),
`loglikelihood` scores continuations with the project's packed scoring (continuations of one
context share its pass; greedy means every token is the argmax), `loglikelihood_rolling` scores
the harness's disjoint windows, and `generate_until` decodes with the KV cache to the model's stop
ids or `max_gen_toks`, then cuts the text (special tokens skipped) before the first `until`
string. `apply_chat_template` renders with the model's own chat template.

Data is read from local files only: the hub is switched off (HF_HUB_OFFLINE, HF_DATASETS_OFFLINE)
unless the environment says otherwise, so a task names its files (`dataset_path: json` and
`data_files`). From Python, after `import flan_jax.lm_harness`, `lm_eval.simple_evaluate(
model="flan_jax", model_args="checkpoint=CKPT")` (or `workdir=RUN,step=N`) works too.
"""

import collections
import json
import os
import pathlib

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import jax  # noqa: E402
import lm_eval  # noqa: E402
import numpy as np  # noqa: E402
from etils import epath  # noqa: E402
from lm_eval.api import model as lm_model  # noqa: E402
from lm_eval.api import registry  # noqa: E402
from lm_eval import utils as harness_utils  # noqa: E402
from lm_eval.models import utils as model_utils  # noqa: E402

from flan_jax import inference  # noqa: E402
from flan_jax.evaluators import ifeval  # noqa: E402
from flan_jax.data import templates  # noqa: E402

DEFAULT_MAX_LENGTH = 2048  # the hf backend's, for a model whose config names no context length
CONTEXT_LENGTH_KEYS = ("n_positions", "max_position_embeddings", "n_ctx"
                       )  # the hf backend's, in order
DEFAULT_MAX_GEN_TOKS = 256  # the hf backend's
GENERATION_KEYS = {"until", "max_gen_toks", "do_sample", "temperature", "top_k", "top_p"}


@registry.register_model("flan_jax")
class FlanJaxLM(lm_model.TemplateLM):
  """A training run's or an imported checkpoint's model (inference.load), split over the devices.

  Model arguments: `checkpoint=DIR` or `workdir=RUN` (with `step=N`), `batch_size` (rows scored or
  decoded at once, rounded up to whole rows per device), `max_length` (tokens of context; as the
  hf backend's: an imported model's context length, else 2048), `max_gen_toks` (the default
  generation length)."""

  def __init__(self, checkpoint: str = "", workdir: str = "", step=None, batch_size=8,
               max_length=None, max_gen_toks=DEFAULT_MAX_GEN_TOKS, loaded=None,
               **harness_arguments):
    super().__init__()
    # The harness also passes the device (JAX places the model) and max_batch_size (batches are
    # fixed).
    unknown = set(harness_arguments) - {"device", "max_batch_size"}
    if unknown:
      raise ValueError(f"flan_jax model: unknown model arguments {sorted(unknown)}")
    self.loaded = loaded or inference.load(workdir=workdir, checkpoint_dir=checkpoint,
                                           step=None if step in (None, "") else int(step))
    self.batch_size = int(batch_size or 8)
    self.max_length = int(max_length or _context_length(self.loaded.path))
    self.max_gen_toks = int(max_gen_toks)
    self._prefix_text = self.loaded.tokenizer.raw_decode([self.prefix_token_id])  # read per request

  @property
  def eot_token_id(self) -> int:
    return self.loaded.tokenizer.eos_id

  @property
  def prefix_token_id(self) -> int:
    """What an empty context is scored after: the BOS, or the EOS for a model without one."""
    tokenizer = self.loaded.tokenizer
    return tokenizer.bos_id if tokenizer.bos_id >= 0 else tokenizer.eos_id

  @property
  def tokenizer_name(self) -> str:
    return self.loaded.tokenizer.path

  def tok_encode(self, string: str, add_special_tokens: bool | None = None, **unused) -> list[int]:
    """As the hf backend encodes: with the tokenizer's own BOS/EOS unless told otherwise or the
    text already starts with the BOS."""
    tokenizer = self.loaded.tokenizer
    if add_special_tokens is None:
      add_special_tokens = not (self._prefix_text and string.startswith(self._prefix_text))
    return tokenizer.encode_text(string) if add_special_tokens else tokenizer.encode(string)

  def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **unused):
    """[(log-likelihood, greedy)] of each ((context, continuation), context ids, continuation
    ids)."""
    by_context = collections.defaultdict(list)  # context ids -> indices of its requests
    for i, (_, context, continuation) in enumerate(requests):
      # Cut from the left as the hf backend cuts: context and continuation in max_length + 1 tokens.
      by_context[tuple(context[-max(1, self.max_length + 1 - len(continuation)):])].append(i)
    grouped = [(list(context), [(np.asarray(requests[i][2]), np.ones(len(requests[i][2])))
                                for i in members]) for context, members in by_context.items()]
    scores, greedy = inference.score(self.loaded, grouped, batch_size=self.batch_size,
                                     seq_len=self.max_length)
    results = [None] * len(requests)
    for members, group_scores, group_greedy in zip(by_context.values(), scores, greedy):
      for i, score, is_greedy in zip(members, group_scores, group_greedy):
        results[i] = (float(score), bool(is_greedy))
    return results

  def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
    """Each text's log-likelihood over the hf backend's disjoint windows of max_length tokens."""
    windows, owners = [], []
    for i, (text, ) in enumerate(request.args for request in requests):
      token_windows = harness_utils.get_rolling_token_windows(
          token_list=self.tok_encode(text), prefix_token=self.prefix_token_id,
          max_seq_len=self.max_length, context_len=1)
      for context, continuation in map(harness_utils.make_disjoint_window, token_windows):
        windows.append(((text, ""), context, continuation))
        owners.append(i)
    totals = np.zeros(len(requests))
    for owner, (score, _) in zip(owners, self._loglikelihood_tokens(windows)):
      totals[owner] += score
    return totals.tolist()

  def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
    """Each (context, generation arguments) continued; requests with the same arguments decode
    together."""
    by_arguments = collections.defaultdict(list)
    for i, request in enumerate(requests):
      by_arguments[json.dumps(request.args[1], sort_keys=True)].append(i)
    tokenizer = self.loaded.tokenizer
    out = [""] * len(requests)
    for arguments, members in by_arguments.items():
      arguments = json.loads(arguments)
      unknown = set(arguments) - GENERATION_KEYS
      if unknown:
        raise ValueError(f"flan_jax model: unsupported generation arguments {sorted(unknown)}")
      until = model_utils.handle_stop_sequences(arguments.get("until"),
                                                eos=tokenizer.raw_decode([tokenizer.eos_id]))
      max_gen_toks = int(arguments.get("max_gen_toks", self.max_gen_toks))
      sampled = arguments.get("do_sample", False) or float(arguments.get("temperature", 0.0)) > 0
      temperature = float(arguments.get("temperature", 1.0)) if sampled else 0.0
      prompts = [
          self.tok_encode(requests[i].args[0])[-(self.max_length - max_gen_toks):] for i in members
      ]
      texts = inference.evaluated_continuations(
          self.loaded, prompts, max_new_tokens=max_gen_toks, batch_size=self.batch_size,
          temperature=temperature, top_k=int(arguments.get("top_k") or 0),
          top_p=float(arguments.get("top_p", 1.0)), stops=[until] * len(prompts))
      for i, text in zip(members, texts):
        out[i] = text
    return out

  def chat_template(self, chat_template: bool | str = False) -> str | None:
    """The model's chat template source (None when not asked for); an error for a model without
    one."""
    if not chat_template:
      return None
    return self._template().source

  def apply_chat_template(self, chat_history: list[dict[str, str]],
                          add_generation_prompt: bool = True) -> str:
    """The conversation rendered as the hf backend renders it: awaiting the answer, or (not
    add_generation_prompt) continuing its last message; without the system turn if the template
    refuses one."""
    template = self._template()
    try:
      text = template.render(chat_history, add_generation_prompt=add_generation_prompt)
    except templates.ChatTemplateError:
      chat_history = [m for m in chat_history if m["role"] != "system"]
      text = template.render(chat_history, add_generation_prompt=add_generation_prompt)
    if not add_generation_prompt:  # the hf backend's continue_final_message
      content = chat_history[-1]["content"]
      text = text[:text.rindex(content) + len(content)]
    return text

  def _template(self) -> templates.ChatTemplate:
    template = self.loaded.tokenizer.chat_template
    if template is None:
      raise ValueError(
          f"{self.loaded.path}: the model has no chat template to apply (its tokenizer "
          f"{self.loaded.tokenizer.path} ships none)")
    return template


def _context_length(model_path: str) -> int:
  """An imported model's context length from its Hugging Face config, else DEFAULT_MAX_LENGTH."""
  config = epath.Path(model_path) / "hf" / "config.json"
  fields = json.loads(config.read_text()) if config.is_file() else {}
  return int(next((fields[k] for k in CONTEXT_LENGTH_KEYS if k in fields), DEFAULT_MAX_LENGTH))


def evaluate(loaded: inference.LoadedModel, *, tasks: list[str], output_path: str,
             include_path: str = "", num_fewshot: int | None = None, limit: float | None = None,
             apply_chat_template: bool = False, batch_size: int = 8,
             max_length: int | None = None) -> dict:
  """Runs harness tasks on a loaded model; process 0 writes the harness's results JSON and each
  task's samples (JSONL) under `output_path`, as `lm_eval --output_path` does. Returns the results.
  `max_length`: tokens of context (FlanJaxLM's default if None).

  An unknown task, or any task file under `include_path` that does not parse, is an error naming
  it."""
  from lm_eval import tasks as harness_tasks
  from lm_eval.loggers import EvaluationTracker

  if include_path:
    _check_task_files(include_path)
  ifeval.install_punkt_tab()  # before any IFEval task module loads (it would download it)
  manager = harness_tasks.TaskManager(include_path=include_path or None)
  unknown = [t for t in tasks if t not in manager.all_tasks]
  if unknown:
    raise ValueError(f"unknown task(s) {unknown}: neither the harness's nor under --include_path "
                     f"{include_path or '(none given)'}")
  tracker = EvaluationTracker(output_path=output_path)
  lm = FlanJaxLM(loaded=loaded, batch_size=batch_size, max_length=max_length)
  results = lm_eval.simple_evaluate(model=lm, model_args=f"pretrained={loaded.path}", tasks=tasks,
                                    num_fewshot=num_fewshot, limit=limit,
                                    apply_chat_template=apply_chat_template, task_manager=manager,
                                    evaluation_tracker=tracker, log_samples=True)
  samples = results.pop("samples")
  if jax.process_index() == 0:
    tracker.save_results_aggregated(results=results, samples=samples)
    for task in results["configs"]:
      tracker.save_results_samples(task_name=task, samples=samples[task])
  return results


def _check_task_files(include_path: str):
  """Every YAML file under include_path loads (the harness itself would skip one with a warning)."""
  from lm_eval.tasks._yaml_loader import load_yaml
  if not pathlib.Path(include_path).is_dir():  # local: the harness reads task files with pathlib
    raise FileNotFoundError(f"--include_path {include_path}: no such directory")
  for path in sorted(pathlib.Path(include_path).rglob("*.yaml")):
    try:
      load_yaml(str(path), resolve_func=False)
    except Exception as e:  # noqa: BLE001 (YAML's and the harness's errors alike name the file)
      raise ValueError(f"{path}: the task file does not parse: {str(e).splitlines()[0]}") from None
