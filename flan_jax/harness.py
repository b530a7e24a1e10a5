r"""Score a trained or imported model on lm-evaluation-harness tasks (flan_jax.lm_harness).

  python -m flan_jax.harness --checkpoint CKPT --tasks my_mc,my_gen --include_path tasks/ \
      --output_path results/ [--num_fewshot K] [--limit N] [--apply_chat_template] [--batch_size 8]
  python -m flan_jax.harness --workdir workdirs/t0 --step 2000 --tasks ifeval_local ...

Tasks are the harness's own YAML files; --include_path adds a directory of them (a local JSONL as
`dataset_path: json` with `data_files`; nothing is downloaded). The results JSON and each task's
samples go under --output_path as `lm_eval --output_path` writes them; the table is printed.
"""

from absl import app, flags
from lm_eval.utils import make_table

from flan_jax import commands, lm_harness


def main(argv):
  commands.start(argv)
  flag = flags.FLAGS
  loaded = commands.load_model()
  results = lm_harness.evaluate(loaded, tasks=[t for t in flag.tasks.split(",")
                                               if t], output_path=flag.output_path,
                                include_path=flag.include_path, num_fewshot=flag.num_fewshot,
                                limit=flag.limit, apply_chat_template=flag.apply_chat_template,
                                batch_size=flag.batch_size)
  print(f"[step {loaded.step}] {loaded.path}\n{make_table(results)}")


if __name__ == "__main__":
  commands.define_model_flags("the model to score")
  flags.DEFINE_string("tasks", None, "Comma-separated harness task names.", required=True)
  flags.DEFINE_string("include_path", "",
                      "A directory of task YAML files to add to the harness's own.")
  flags.DEFINE_string("output_path", None, "Where the results JSON and samples go.", required=True)
  flags.DEFINE_integer("num_fewshot", None, "Few-shot examples per prompt (default: each task's).")
  flags.DEFINE_float("limit", None, "At most this many examples per task (a fraction if below 1).")
  flags.DEFINE_bool("apply_chat_template", False, "Render prompts with the model's chat template.")
  flags.DEFINE_integer("batch_size", 8, "Rows scored or decoded at once.")
  flags.DEFINE_integer("max_length", None, "Tokens of context (default: an imported model's context "
                       "length, else 2048), as the hf backend's max_length.")
  app.run(main)
