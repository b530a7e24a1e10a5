import dataclasses
import shutil

import pytest

from flan_jax import workdirs


def test_default_workdir_names():
  assert workdirs.default("configs/tiny.py") == "workdirs/tiny"
  assert workdirs.default("configs/flan2021.py:held_out=nli") == "workdirs/flan2021_held_out=nli"


def test_a_run_is_tied_to_its_tokenizer(tokenizer, tmp_path):
  checksum = workdirs.check_tokenizer(str(tmp_path), tokenizer, write=True)
  assert (tmp_path / "tokenizer.sha256").read_text().split()[0] == checksum
  assert workdirs.check_tokenizer(str(tmp_path), tokenizer, write=False) == checksum  # the same one: fine
  other_file = tmp_path / "other.model"
  shutil.copy(tokenizer.path, other_file)
  with open(other_file, "ab") as f:
    f.write(b"\0")
  other = dataclasses.replace(tokenizer, path=str(other_file))
  with pytest.raises(ValueError, match=r"tokenizer.sha256: this run was trained with another tokenizer"):
    workdirs.check_tokenizer(str(tmp_path), other, write=True)
