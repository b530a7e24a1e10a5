import datetime
import json

import pytest

from flan_jax.data import templates, vocab
from flan_jax.data.templates import EOS, Template
from tests.helpers import FAMILY_CHAT_TEMPLATES, FAMILY_TOKENS, family_tokenizer


def test_substitute_never_evaluates_field_values():
  fields = {"a": "{0.__class__}", "b": "{a}", "c": "{__import__('os')}"}
  assert templates.substitute("x {a} y {b} z {c}", fields) == "x {0.__class__} y {a} z {__import__('os')}"


def test_substitute_rejects_attribute_access_in_patterns():
  # Only bare names are placeholders; anything else stays literal text.
  assert templates.substitute("{a.__class__} {a[0]} {a!r}", {"a": "v"}) == "{a.__class__} {a[0]} {a!r}"


def test_substitute_escapes_and_unknown_fields():
  assert templates.substitute("{{literal}} {a}", {"a": 1}) == "{literal} 1"
  with pytest.raises(KeyError, match="task t, template 2: field 'missing'"):
    templates.substitute("{missing}", {"a": 1}, "task t, template 2")


def test_options_suffix_on_and_off():
  t = Template("Q: {q}{options_}")
  on = templates.render_pair(t, {"q": "why?", "answer": "yes"}, options=("no", "yes"), show_options=True,
                             chain_of_thought=False, where="")
  off = templates.render_pair(t, {"q": "why?", "answer": "yes"}, options=("no", "yes"), show_options=False,
                              chain_of_thought=False, where="")
  assert on == ("Q: why?\n\nOPTIONS:\n- no\n- yes", "yes")
  assert off == ("Q: why?", "yes")


def test_chain_of_thought_only_with_a_rationale():
  t = Template("What is {e}?")
  with_r = templates.render_pair(t, {"e": "2 + 2", "answer": "4", "rationale": "2 + 2 = 4."}, options=None,
                                 show_options=True, chain_of_thought=True, where="")
  assert with_r == (f"What is 2 + 2?\n{templates.COT_TRIGGER}", "2 + 2 = 4. So the answer is 4.")
  without = templates.render_pair(t, {"e": "2 + 2", "answer": "4"}, options=None, show_options=True,
                                  chain_of_thought=True, where="")
  assert without == ("What is 2 + 2?", "4")


def test_inverted_templates_and_template_count():
  ts = [Template("a"), Template("b", inverted=True), Template("c")]
  assert templates.select_templates(ts, inverted=False, max_templates=0) == [ts[0], ts[2]]
  assert templates.select_templates(ts, inverted=True, max_templates=2) == ts[:2]


def test_few_shot_prompt_respects_token_budget():
  shots = [("q1", "a1"), ("q2", "a2"), ("q3", "a3")]
  count = len  # one "token" per character
  full = templates.few_shot_prompt("query", shots, max_tokens=1000, count_tokens=count)
  assert full == "q1\na1\n\nq2\na2\n\nq3\na3\n\nquery"
  two = templates.few_shot_prompt("query", shots, max_tokens=len("q1\na1\n\nq2\na2\n\nquery"), count_tokens=count)
  assert two == "q1\na1\n\nq2\na2\n\nquery"
  assert templates.few_shot_prompt("query", shots, max_tokens=3, count_tokens=count) == "query"


def test_formats_mark_only_responses_for_loss():
  turns = [("user", "Do it."), ("input", "data"), ("assistant", "Done.")]
  assert templates.to_segments(turns, "flan") == [("Do it.\n\n", 0), ("data\n\n", 0), ("Done.", 1), (EOS, 1)]
  assert templates.to_segments(turns, "alpaca") == [
      ("### Instruction:\nDo it.\n\n", 0), ("### Input:\ndata\n\n", 0), ("### Response:\n", 0), ("Done.", 1), (EOS, 1)]
  assert templates.to_segments(turns, "chat") == [
      ("<|user|>\nDo it.\n", 0), ("data\n", 0), ("<|assistant|>\n", 0), ("Done.\n", 1), (EOS, 1)]
  with pytest.raises(ValueError, match="unknown output format"):
    templates.to_segments(turns, "xml")


# One exchange as each family's Hugging Face chat template renders it (BOS comes from the tokenizer).
CHAT_EXPECTED = {
    "llama3": ("<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
               "<|start_header_id|>user<|end_header_id|>\n\nTranslate to French:\n\ncat<|eot_id|>"
               "<|start_header_id|>assistant<|end_header_id|>\n\nchat<|eot_id|>"),
    "chatml": ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nTranslate to French:\n\ncat<|im_end|>\n"
               "<|im_start|>assistant\nchat<|im_end|>"),
    "gemma": ("<start_of_turn>user\nBe brief.\n\nTranslate to French:\n\ncat<end_of_turn>\n"
              "<start_of_turn>model\nchat<end_of_turn>"),
    "mistral": "[INST] Be brief.\n\nTranslate to French:\n\ncat [/INST]chat",
}


@pytest.mark.parametrize("fmt", sorted(CHAT_EXPECTED))
def test_family_chat_formats(fmt):
  conversation = [("system", "Be brief."), ("user", "Translate to French:"), ("input", "cat"), ("assistant", "chat")]
  assert templates.to_text(conversation, fmt, eos="") == CHAT_EXPECTED[fmt]
  segments = templates.to_segments(conversation, fmt)
  response = "".join(t for t, w in segments if w and t is not templates.EOS)
  assert response == CHAT_EXPECTED[fmt][CHAT_EXPECTED[fmt].rindex("chat"):]  # the answer and its end of turn
  assert segments[-1] == (templates.EOS, 1)


CONVERSATION = [("user", "Is the cat on the mat?"), ("assistant", "Yes."), ("user", "Then where is the dog?"),
                ("assistant", " The dog sat on the mat. ")]


@pytest.mark.parametrize("family", sorted(FAMILY_CHAT_TEMPLATES))
def test_chat_template_loss_weights_and_tokens_match_transformers(family, tmp_path):
  """Every assistant turn and its end of turn (and nothing else) carries weight 1, and the tokens are
  transformers' apply_chat_template's for the same conversation."""
  import transformers

  from flan_jax.data import tokenizer as tokenizer_lib
  family_tokenizer(tmp_path, family)
  tokenizer = tokenizer_lib.load(str(tmp_path))
  tokens, weights = tokenizer.encode_conversation(CONVERSATION, templates.CHAT_TEMPLATE)
  reference = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
  messages = [{"role": role, "content": text} for role, text in CONVERSATION]
  assert tokens.tolist() == reference.apply_chat_template(messages, return_dict=True)["input_ids"]
  end = FAMILY_TOKENS[family][2]
  trained = tokenizer.raw_decode([int(t) for t, w in zip(tokens, weights) if w])
  answers = ["Yes.", " The dog sat on the mat. "]
  if family in ("llama3", "gemma"):  # their templates trim the content
    answers = [a.strip() for a in answers]
  assert trained == "".join(a + end for a in answers)
  prompt = tokenizer.generation_prompt(CONVERSATION[:1], templates.CHAT_TEMPLATE)
  assert prompt == reference.apply_chat_template(messages[:1], add_generation_prompt=True, return_dict=True)["input_ids"]
  assert tokens[:len(prompt)].tolist() == prompt and weights[len(prompt)] == 1 and not weights[:len(prompt)].any()


def test_chat_template_errors_name_the_template():
  where = "hf/tokenizer_config.json"
  with pytest.raises(templates.ChatTemplateError, match=f"{where}: the chat template does not parse"):
    templates.ChatTemplate("{% for m in messages %}", {}, [], where)
  gemma = templates.ChatTemplate(FAMILY_CHAT_TEMPLATES["gemma"], {"bos_token": "<bos>"}, ["<end_of_turn>"], where)
  with pytest.raises(templates.ChatTemplateError, match=r"does not render messages with roles \['system', 'user'\]: "
                                                        "System role not supported"):
    gemma.segments([("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello")])
  forgetful = templates.ChatTemplate(  # renders only the last exchange, as templates that drop old reasoning do
      "{% for m in messages[-2:] %}<{{ m['role'] }}>{{ m['content'] }}</s>{% endfor %}"
      "{% if add_generation_prompt %}<assistant>{% endif %}", {}, ["</s>"], where)
  assert forgetful.segments(CONVERSATION[:2]) == [("<user>Is the cat on the mat?</s><assistant>", 0), ("Yes.</s>", 1)]
  with pytest.raises(templates.ChatTemplateError, match="does not render assistant turn 3 as an extension"):
    forgetful.segments(CONVERSATION)
  with pytest.raises(ValueError, match="needs a tokenizer that ships a chat template"):
    templates.to_segments(CONVERSATION, templates.CHAT_TEMPLATE, None)
  sandboxed = templates.ChatTemplate("{{ messages.__class__.__mro__ }}", {}, [], where)
  with pytest.raises(Exception, match="unsafe|not safely|access"):
    sandboxed.render([], add_generation_prompt=False)


def test_template_styles_keep_instructions_or_only_the_inputs():
  task_templates = (templates.Template("Premise: {premise}\nHypothesis: {hypothesis}\nEntailed?{options_}"),
                    templates.Template("Write a hypothesis: {premise}", "{hypothesis}", inverted=True))
  assert templates.styled(task_templates, "instructions", "mini_nli") == task_templates
  (name_only,) = templates.styled(task_templates, "task_name", "mini_nli")
  (bare,) = templates.styled(task_templates, "none", "mini_nli")
  fields = {"premise": "A dog runs.", "hypothesis": "An animal moves.", "answer": "yes"}
  render = lambda t: templates.render_pair(t, fields, options=["yes", "no"], show_options=True,
                                           chain_of_thought=False, where="")
  assert render(name_only) == ("[mini_nli]\nA dog runs.\nAn animal moves.\n\nOPTIONS:\n- yes\n- no", "yes")
  assert render(bare) == ("A dog runs.\nAn animal moves.\n\nOPTIONS:\n- yes\n- no", "yes")
  with pytest.raises(ValueError, match="data.template.style='names': choose from instructions, task_name, none"):
    templates.styled(task_templates, "names", "t")


def test_chat_templates_render_the_configured_date_not_the_clocks(tmp_path, monkeypatch, tiny_config):
  """Llama 3.x's template writes strftime_now's date into every conversation: the tokenizer a run
  loads renders data.tokenizer.chat_template_date, the same on any day."""
  family_tokenizer(tmp_path, "llama3")
  config = json.loads((tmp_path / "tokenizer_config.json").read_text())
  config["chat_template"] = ("{{ bos_token }}<|start_header_id|>system<|end_header_id|>\n\nToday Date: "
                             "{{ strftime_now('%d %b %Y') }}<|eot_id|>{% for m in messages %}"
                             "<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] }}"
                             "<|eot_id|>{% endfor %}")
  (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
  data = tiny_config.data
  with data.unlocked():
    data.tokenizer.model = str(tmp_path)

  def render_on(day):
    class Clock(datetime.datetime):
      @classmethod
      def now(cls, tz=None):
        return cls(day.year, day.month, day.day)
    monkeypatch.setattr(datetime, "datetime", Clock)
    tokenizer = vocab.get_tokenizer(data, str(tmp_path / "unused"))
    monkeypatch.undo()
    return tokenizer.chat_template.generation_prompt([("user", "Hi")])

  first, second = render_on(datetime.date(2025, 3, 1)), render_on(datetime.date(2027, 9, 30))
  assert first == second and "Today Date: 01 Jan 2026" in first
  with data.unlocked():
    data.tokenizer.chat_template_date = "2024-07-26"
  assert "Today Date: 26 Jul 2024" in render_on(datetime.date(2025, 3, 1))
  with data.unlocked():
    data.tokenizer.chat_template_date = "26/07/2024"
  with pytest.raises(ValueError, match="data.tokenizer.chat_template_date='26/07/2024': expected YYYY-MM-DD"):
    render_on(datetime.date(2025, 3, 1))
