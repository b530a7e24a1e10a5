"""An evaluator's own keys (config.evals.<name>, less its cadence), read into its Settings class."""


def read(settings_cls, name: str, kwargs: dict):
  """`settings_cls(**kwargs)` (a dataclass); an unknown, missing or bad key is an error naming
  evals.<name> and the keys the evaluator has."""
  try:
    return settings_cls(**kwargs)
  except (TypeError, ValueError) as error:
    keys = ", ".join(settings_cls.__dataclass_fields__)
    raise ValueError(f"evals.{name}: {error} (keys: {keys})") from None
