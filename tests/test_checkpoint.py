import grain
import jax
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec

from flan_jax import checkpoint, sharding, train
from flan_jax import model as model_lib
from tests.test_train import small_config


def make_state(mesh_config, rules_name, config):
  mesh = sharding.make_mesh(mesh_config)
  rules = sharding.rules(rules_name)
  model = model_lib.from_config(config.model)
  optimizer = optax.adam(1e-3)
  with sharding.context(mesh, rules):
    shapes, shardings = train.state_shapes(model, optimizer, mesh, rules)
    state = train.init_state(model, optimizer, mesh, shardings, jax.random.key(0))
  return state, checkpoint.abstract(shapes, shardings)


def test_restores_onto_a_different_mesh_with_the_data_position(tmp_path):
  config = small_config()
  state, _ = make_state(dict(data=8, fsdp=1, tensor=1), "dp", config)
  data = iter(grain.MapDataset.range(100).to_iter_dataset())
  consumed = [next(data) for _ in range(3)]
  manager = checkpoint.manager(str(tmp_path), keep=2)
  checkpoint.save(manager, 3, state, data)
  manager.wait_until_finished()

  _, target = make_state(dict(data=1, fsdp=4, tensor=2), "fsdp_tp", config)
  fresh_data = iter(grain.MapDataset.range(100).to_iter_dataset())
  restored = checkpoint.restore_latest(checkpoint.manager(str(tmp_path), keep=2), target, fresh_data)
  assert consumed == [0, 1, 2] and next(fresh_data) == 3
  wq = restored.params["block_0"]["attention"]["wq"]
  assert wq.sharding == target.params["block_0"]["attention"]["wq"].sharding
  assert wq.sharding.spec == PartitionSpec("fsdp", "tensor", None)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored), jax.device_get(state))


def test_no_checkpoint_gives_none_and_init_from_an_empty_directory_is_an_error(tmp_path):
  config = small_config()
  _, target = make_state(dict(data=-1, fsdp=1, tensor=1), "dp", config)
  data = iter(grain.MapDataset.range(10).to_iter_dataset())
  assert checkpoint.restore_latest(checkpoint.manager(str(tmp_path), keep=1), target, data) is None
  with pytest.raises(FileNotFoundError, match="checkpoints.*no checkpoint steps"):
    checkpoint.restore_params(str(tmp_path / "checkpoints"), target.params)
