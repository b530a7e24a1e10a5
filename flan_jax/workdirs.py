"""Where a run keeps its outputs: `workdirs/<config name>[_<arg>]` unless --workdir says otherwise."""

import hashlib
import os


def default(config_arg: str) -> str:
  """`configs/flan2021.py:held_out=nli` -> `workdirs/flan2021_held_out=nli`; slashes in the argument
  (a checkpoint path) become underscores, so the workdir is one directory."""
  path, _, arg = config_arg.partition(":")
  name = os.path.splitext(os.path.basename(path))[0]
  return os.path.join("workdirs", f"{name}_{arg.replace('/', '_')}" if arg else name)


def tokenizer_dir(workdir: str) -> str:
  return os.path.join(workdir, "tokenizer")


def check_tokenizer(workdir: str, tokenizer, write: bool) -> str:
  """Ties a run to its tokenizer: the first run records a checksum of the tokenizer file and chat
  template in `<workdir>/tokenizer.sha256`; a rerun with another tokenizer is an error, since its
  token ids would silently differ from the ones the checkpoints were trained on."""
  digest = hashlib.sha256()
  with open(tokenizer.path, "rb") as f:
    digest.update(f.read())
  if tokenizer.chat_template is not None:
    digest.update(tokenizer.chat_template.source.encode())
  checksum, record = digest.hexdigest(), os.path.join(workdir, "tokenizer.sha256")
  if os.path.exists(record):
    with open(record) as f:
      recorded = f.read().split()[0]
    if recorded != checksum:
      raise ValueError(f"{record}: this run was trained with another tokenizer (sha256 {recorded}); "
                       f"{tokenizer.path} has sha256 {checksum}. Use the run's tokenizer, or a new workdir")
  elif write:
    with open(record, "w") as f:
      f.write(f"{checksum}  {tokenizer.path}\n")
  return checksum
