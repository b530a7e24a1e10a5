"""Helpers shared by config files."""


def parse_arg(arg: str | None, **defaults) -> dict:
  """`key=value,key=value` (from `--config configs/X.py:key=value,...`) over `defaults`, typed like them."""
  values = dict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, sep, value = item.partition("=")
    if not sep or key not in defaults:
      raise ValueError(f"config argument {item!r}: expected key=value with key one of {', '.join(defaults)}")
    default = defaults[key]
    values[key] = value.lower() in ("1", "true", "yes") if isinstance(default, bool) else type(default)(value)
  return values
