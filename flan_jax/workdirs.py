"""Where a run keeps its outputs: `workdirs/<config name>[_<arg>]` unless --workdir says otherwise.

A workdir may be any path `etils.epath` reads and writes: a local directory, or a bucket
(`gs://...`, `s3://...`) that every process of a multi-host run sees.
"""

import os

import jax
from etils import epath

from flan_jax.data import tokenizer as tokenizer_lib


def default(config_arg: str) -> str:
  """`configs/flan2021.py:held_out=nli` -> `workdirs/flan2021_held_out=nli`; slashes in the argument
  (a checkpoint path) become underscores, so the workdir is one directory."""
  path, _, arg = config_arg.partition(":")
  name = os.path.splitext(os.path.basename(path))[0]
  return os.path.join("workdirs", f"{name}_{arg.replace('/', '_')}" if arg else name)


def tokenizer_dir(workdir: str) -> str:
  return str(epath.Path(workdir) / "tokenizer")


def check_tokenizer(workdir: str, tokenizer, write: bool) -> str:
  """Ties a run to its tokenizer: the first run records a checksum of the tokenizer file and chat
  template in `<workdir>/tokenizer.sha256`; a rerun with another tokenizer is an error, since its
  token ids would silently differ from the ones the checkpoints were trained on."""
  checksum, record = tokenizer_lib.checksum(tokenizer), epath.Path(workdir) / "tokenizer.sha256"
  if record.exists():
    recorded = record.read_text().split()[0]
    if recorded != checksum:
      raise ValueError(f"{record}: this run was trained with another tokenizer (sha256 {recorded}); "
                       f"{tokenizer.path} has sha256 {checksum}. Use the run's tokenizer, or a new workdir")
  elif write:
    record.write_text(f"{checksum}  {tokenizer.path}\n")
  return checksum


def prepare(config, workdir: str):
  """Creates the workdir (an error naming it if that fails) and writes the config used into it."""
  try:
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0:
      (epath.Path(workdir) / "config.json").write_text(config.to_json_best_effort(indent=2, sort_keys=True))
  except OSError as error:
    raise SystemExit(f"workdir {workdir!r} is not writable: {error}") from error
