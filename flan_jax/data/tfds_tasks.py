"""FLAN 2021 datasets that TFDS provides, each in its FLAN cluster with its own templates.

Records are read with `tfds.data_source` (random access, ArrayRecord), with
download disabled: prepare a dataset once with
`tfds build NAME --file_format=array_record`, and training never downloads.
FLAN 2021 datasets without a usable TFDS builder are listed in README.md.
"""

import numpy as np

from flan_jax.data import mixture, tasks
from flan_jax.data.templates import Template as T

NLI3 = ("yes", "it is not possible to tell", "no")
YES_NO = ("no", "yes")
SENTIMENT = ("negative", "positive")
CLASSIFY = ("accuracy", "macro_f1")
REFUSAL = "unanswerable"


def source(builder: str):
  def load(split: str):
    import tensorflow_datasets as tfds  # imported on use: TensorFlow takes seconds to import
    try:
      return tfds.data_source(builder, split=split, download=False)
    except Exception as e:  # TFDS raises several types for "not prepared"
      raise FileNotFoundError(
          f"TFDS dataset {builder!r} split {split!r} could not be opened ({type(e).__name__}: {e}). "
          f"Prepare it once with: tfds build {builder} --file_format=array_record") from None
  return load


def text(value) -> str:
  if isinstance(value, bytes):
    return value.decode("utf-8")
  if isinstance(value, np.ndarray) and value.ndim == 0:
    return text(value.item())
  return str(value)


def texts(values) -> list[str]:
  return [text(v) for v in values]


def label(record, key: str, names: tuple[str, ...]) -> str:
  """The class name of an integer label; -1 (TFDS: no label) is an unlabeled record, other
  out-of-range labels are bad records."""
  i = int(record[key])
  if i == -1:
    raise tasks.UnlabeledRecordError(f"label {key}=-1: the dataset gives this record no label")
  if not 0 <= i < len(names):
    raise tasks.BadRecordError(f"label {key}={i} is outside 0..{len(names) - 1}")
  return names[i]


def choice(options: list[str], index) -> str:
  i = int(index)
  if not 0 <= i < len(options):
    raise tasks.BadRecordError(f"answer index {i} is outside the {len(options)} options")
  return options[i]


def first(values) -> str:
  values = texts(values)
  if not values:
    raise tasks.BadRecordError("no reference answer")
  return values[0]


def table(value) -> str:
  """A TFDS table feature (column_header, row_number, content) as `header[content]` rows."""
  rows = {}
  for row, header, content in zip(value["row_number"], texts(value["column_header"]), texts(value["content"])):
    rows.setdefault(int(row), []).append(f"{header}[{content}]")
  return " ; ".join(", ".join(cells) for _, cells in sorted(rows.items()))


# ------------------------------------------------------------- preprocessors


def nli(premise, hypothesis, names):
  return lambda r: dict(premise=text(r[premise]), hypothesis=text(r[hypothesis]), answer=label(r, "label", names))


def pair(first_key, second_key, names):
  return lambda r: dict(sentence1=text(r[first_key]), sentence2=text(r[second_key]), answer=label(r, "label", names))


def single(text_key, names, label_key="label"):
  return lambda r: dict(text=text(r[text_key]), answer=label(r, label_key, names))


def qa(question_key, answer_fn, context_key=None):
  def preprocess(r):
    fields = dict(question=text(r[question_key]), answer=answer_fn(r))
    if context_key:
      fields["context"] = text(r[context_key])
    return fields
  return preprocess


def summary(document_key, summary_fn):
  return lambda r: dict(document=text(r[document_key]), answer=summary_fn(r))


def translation(source_lang, code):
  names = {"cs": "Czech", "de": "German", "fi": "Finnish", "ro": "Romanian", "ru": "Russian", "tr": "Turkish",
           "fr": "French", "en": "English"}
  return lambda r: dict(source=text(r[code]), src_lang=names[code], tgt_lang=names[source_lang], answer=text(r[source_lang]))


def copa(r):
  options = [text(r["choice1"]), text(r["choice2"])]
  return dict(premise=text(r["premise"]), question=text(r["question"]), options=options,
              answer=choice(options, r["label"]))


def endings(context_key, endings_key):
  def preprocess(r):
    options = texts(r[endings_key])
    return dict(context=text(r[context_key]), options=options, answer=choice(options, r["label"]))
  return preprocess


def piqa(r):
  options = [text(r["sol1"]), text(r["sol2"])]
  return dict(context=text(r["goal"]), options=options, answer=choice(options, r["label"]))


def sentiment140(r):
  polarity = int(r["polarity"])
  if polarity not in (0, 4):
    raise tasks.BadRecordError(f"polarity {polarity} is neither 0 (negative) nor 4 (positive)")
  return dict(text=text(r["text"]), answer=SENTIMENT[polarity // 4])


def stsb(r):
  score = float(r["label"])
  if not 0.0 <= score <= 5.0:
    raise tasks.BadRecordError(f"similarity {score} is outside 0..5")
  return dict(sentence1=text(r["sentence1"]), sentence2=text(r["sentence2"]), answer=str(round(score)))


def arc(r):
  options, keys = texts(r["choices"]["text"]), [int(k) for k in r["choices"]["label"]]
  key = int(r["answerKey"])
  if len(options) != len(keys):
    raise tasks.BadRecordError(f"choices have {len(options)} texts but {len(keys)} labels")
  if key not in keys:
    raise tasks.BadRecordError(f"answerKey {key} is not among the choice labels {keys}")
  return dict(question=text(r["question"]), options=options, answer=options[keys.index(key)])


def openbookqa(r):
  q = r["question"]
  options = [text(q[f"choice_{c}"]) for c in "ABCD"]
  return dict(question=text(q["stem"]), options=options, answer=choice(options, r["answerKey"]))


def multiple_choice_answers(prefix, count):
  def preprocess(r):
    options = [text(r[f"{prefix}{i}"]) for i in range(count)]
    return dict(context=text(r["context"]), question=text(r["question"]), options=options,
                answer=choice(options, r["label"]))
  return preprocess


def squad_v2(r):
  impossible = bool(r["is_impossible"])
  answer = REFUSAL if impossible else first(r["answers"]["text"])
  return dict(context=text(r["context"]), question=text(r["question"]), answer=answer)


def multirc(r):
  return dict(context=text(r["paragraph"]), question=f"{text(r['question'])} Is \"{text(r['answer'])}\" a correct answer?",
              answer=label(r, "label", YES_NO))


def record(r):
  return dict(context=text(r["passage"]), question=text(r["query"]), answer=first(r["answers"]))


def coreference(sentence_key, pronoun_key, option_keys):
  def preprocess(r):
    options = texts(r[option_keys]) if isinstance(option_keys, str) else [text(r[k]) for k in option_keys]
    return dict(sentence=text(r[sentence_key]), pronoun=text(r[pronoun_key]) if pronoun_key else "_",
                options=options, answer=choice(options, r["label"]))
  return preprocess


def coqa(r):
  return dict(context=text(r["story"]), question=first(r["questions"]), answer=first(r["answers"]["input_text"]))


def quac(r):
  return dict(context=text(r["context"]), question=text(r["question"]), answer=text(r["orig_answer"]["text"]))


def wic(r):
  return dict(word=text(r["word"]), sentence1=text(r["sentence1"]), sentence2=text(r["sentence2"]),
              answer=label(r, "label", YES_NO))


def data_to_text(with_context=False):
  def preprocess(r):
    data = table(r["input_text"]["table"])
    if with_context and text(r["input_text"]["context"]):
      data = f"{text(r['input_text']['context'])}: {data}"
    return dict(table=data, answer=text(r["target_text"]))
  return preprocess


# ----------------------------------------------------------------- templates
NLI_T = (
    T("{premise}\n\nCan we infer the following?\n{hypothesis}{options_}"),
    T("Premise: \"{premise}\"\nHypothesis: \"{hypothesis}\"\nIs the hypothesis entailed by the premise?{options_}"),
    T("Suppose \"{premise}\" Can we conclude that \"{hypothesis}\"?{options_}"),
    T("Given that {premise} Does it follow that {hypothesis}{options_}"),
    T("Write a sentence that a reader of \"{premise}\" would judge as: {answer}.", "{hypothesis}", inverted=True),
)
QNLI_T = (
    T("Does the sentence \"{sentence}\" answer the question \"{question}\"?{options_}"),
    T("Question: {question}\nSentence: {sentence}\nDoes the sentence contain the answer?{options_}"),
    T("{question}\n\nIs \"{sentence}\" a good answer to this question?{options_}"),
)
PARAPHRASE_T = (
    T("{sentence1}\n{sentence2}\n\nDo these two sentences say the same thing?{options_}"),
    T("Are the following two sentences paraphrases?\nA: {sentence1}\nB: {sentence2}{options_}"),
    T("Sentence one: {sentence1}\nSentence two: {sentence2}\nDo they have the same meaning?{options_}"),
    T("Write a sentence that means the same as: {sentence1}", "{sentence2}", inverted=True),
)
STSB_T = (
    T("How similar are these sentences, on a scale from 0 to 5?\n{sentence1}\n{sentence2}{options_}"),
    T("Rate the similarity of \"{sentence1}\" and \"{sentence2}\" from 0 (unrelated) to 5 (same meaning).{options_}"),
    T("Sentence A: {sentence1}\nSentence B: {sentence2}\nSimilarity score (0-5)?{options_}"),
)
SENTIMENT_T = (
    T("{text}\n\nWhat is the sentiment of this text?{options_}"),
    T("Is the following review positive or negative?\n{text}{options_}"),
    T("\"{text}\"\nDid the writer like it?{options_}"),
    T("Write a {answer} review.", "{text}", inverted=True),
)
COPA_T = (
    T("{premise}\nWhat is the {question}?{options_}"),
    T("Premise: {premise}\nChoose the more likely {question}.{options_}"),
    T("\"{premise}\" Which of the following is the {question} of this?{options_}"),
)
COMPLETION_T = (
    T("{context}\n\nWhat comes next?{options_}"),
    T("Complete the following: {context}{options_}"),
    T("How does this continue?\n{context}{options_}"),
    T("Write a sentence that could come right before this: {answer}", "{context}", inverted=True),
)
MC_QA_T = (
    T("{question}{options_}"),
    T("Question: {question}\nPick the correct answer.{options_}"),
    T("Answer this multiple-choice question: {question}{options_}"),
)
CBQA_T = (
    T("{question}"),
    T("Answer the following question: {question}"),
    T("Q: {question}\nA:"),
    T("Write a trivia question whose answer is {answer}.", "{question}", inverted=True),
)
READING_T = (
    T("{context}\n\nAnswer the question using the text above: {question}{options_}"),
    T("Read this and answer the question.\n\n{context}\n\nQuestion: {question}{options_}"),
    T("Passage: {context}\nQuestion: {question}\nAnswer:{options_}"),
)
READING_MC_T = (
    T("{context}\n\n{question}{options_}"),
    T("Read the text and answer.\n{context}\nQuestion: {question}{options_}"),
    T("Context: {context}\nQ: {question}\nChoose the best answer.{options_}"),
)
COREFERENCE_T = (
    T("{sentence}\n\nWho or what is \"{pronoun}\" in this sentence?{options_}"),
    T("In \"{sentence}\", what does \"{pronoun}\" stand for?{options_}"),
    T("Sentence: {sentence}\nWhich option does \"{pronoun}\" refer to?{options_}"),
)
STRUCT_T = (
    T("Describe this data in a sentence: {table}"),
    T("Data: {table}\nWrite text that says what the data says."),
    T("Turn this into fluent text:\n{table}"),
    T("Extract the facts of this sentence as data: {answer}", "{table}", inverted=True),
)
TRANSLATE_T = (
    T("Translate to {tgt_lang}:\n\n{source}"),
    T("{src_lang}: {source}\n{tgt_lang}:"),
    T("How is \"{source}\" said in {tgt_lang}?"),
    T("Translate from {tgt_lang} to {src_lang}: {answer}", "{source}", inverted=True),
)
SUMMARY_T = (
    T("{document}\n\nSummarize the text above."),
    T("Write a short summary of this:\n\n{document}"),
    T("Text: {document}\nSummary:"),
    T("Write a text that this summary could describe: {answer}", "{document}", inverted=True),
)
TOPIC_T = (
    T("{document}\n\nWhat is this article about?{options_}"),
    T("Which topic does this news text belong to?\n{document}{options_}"),
    T("Article: {document}\nTopic:{options_}"),
)
TREC_T = (
    T("What kind of answer does this question ask for?\n{text}{options_}"),
    T("Question: {text}\nIs it asking about a description, an entity, an abbreviation, a person, a number or a place?{options_}"),
    T("Classify the question by the type of its answer: {text}{options_}"),
)
COLA_T = (
    T("Is this sentence grammatically acceptable?\n{text}{options_}"),
    T("\"{text}\"\nWould a linguist rate this sentence as acceptable English?{options_}"),
    T("Sentence: {text}\nIs it grammatical?{options_}"),
)
WIC_T = (
    T("Does the word \"{word}\" mean the same thing in these two sentences?\n{sentence1}\n{sentence2}{options_}"),
    T("Sentence 1: {sentence1}\nSentence 2: {sentence2}\nIs \"{word}\" used in the same sense in both?{options_}"),
    T("\"{word}\" in \"{sentence1}\" and in \"{sentence2}\": same meaning?{options_}"),
)
MATH_T = (T("{question}"), T("Solve: {question}"), T("Math problem: {question}\nAnswer:"))

AG_NEWS = ("World", "Sports", "Business", "Science/Tech")
TREC = ("description", "entity", "abbreviation", "human", "numeric", "location")


def ag_news(r):
  return dict(document=f"{text(r['title'])}\n{text(r['description'])}", answer=label(r, "label", AG_NEWS))


def trec(r):
  return dict(text=text(r["text"]), answer=label(r, "label-coarse", TREC))


# name: (TFDS builder, cluster, preprocess, templates, options, metrics, (train split, eval split))
# options: a tuple for fixed options, "per_example", or None for generation.
TV, TT, TD = ("train", "validation"), ("train", "test"), ("train", "dev")
SPECS = {
    # nli
    "anli_r1": ("anli/r1", "nli", nli("context", "hypothesis", NLI3), NLI_T, NLI3, CLASSIFY, TV),
    "anli_r2": ("anli/r2", "nli", nli("context", "hypothesis", NLI3), NLI_T, NLI3, CLASSIFY, TV),
    "anli_r3": ("anli/r3", "nli", nli("context", "hypothesis", NLI3), NLI_T, NLI3, CLASSIFY, TV),
    "cb": ("super_glue/cb", "nli", nli("premise", "hypothesis", ("yes", "no", "it is not possible to tell")), NLI_T, NLI3, CLASSIFY, TV),
    "mnli": ("glue/mnli", "nli", nli("premise", "hypothesis", NLI3), NLI_T, NLI3, CLASSIFY, ("train", "validation_matched")),
    "qnli": ("glue/qnli", "nli", lambda r: dict(question=text(r["question"]), sentence=text(r["sentence"]), answer=label(r, "label", ("yes", "no"))), QNLI_T, YES_NO, CLASSIFY, TV),
    "rte": ("glue/rte", "nli", nli("sentence1", "sentence2", ("yes", "no")), NLI_T, YES_NO, CLASSIFY, TV),
    "snli": ("snli", "nli", nli("premise", "hypothesis", NLI3), NLI_T, NLI3, CLASSIFY, TV),
    "wnli": ("glue/wnli", "nli", nli("sentence1", "sentence2", ("no", "yes")), NLI_T, YES_NO, CLASSIFY, TV),
    # commonsense
    "copa": ("super_glue/copa", "commonsense", copa, COPA_T, "per_example", CLASSIFY, TV),
    "hellaswag": ("hellaswag", "commonsense", endings("context", "endings"), COMPLETION_T, "per_example", CLASSIFY, TV),
    "piqa": ("piqa", "commonsense", piqa, COMPLETION_T, "per_example", CLASSIFY, TV),
    "story_cloze": ("story_cloze/2016", "commonsense", endings("context", "endings"), COMPLETION_T, "per_example", CLASSIFY, ("validation", "test")),
    # sentiment
    "imdb_reviews": ("imdb_reviews", "sentiment", single("text", SENTIMENT), SENTIMENT_T, SENTIMENT, CLASSIFY, TT),
    "sentiment140": ("sentiment140", "sentiment", sentiment140, SENTIMENT_T, SENTIMENT, CLASSIFY, TT),
    "sst2": ("glue/sst2", "sentiment", single("sentence", SENTIMENT), SENTIMENT_T, SENTIMENT, CLASSIFY, TV),
    "yelp_polarity_reviews": ("yelp_polarity_reviews", "sentiment", single("text", SENTIMENT), SENTIMENT_T, SENTIMENT, CLASSIFY, TT),
    # paraphrase
    "mrpc": ("glue/mrpc", "paraphrase", pair("sentence1", "sentence2", YES_NO), PARAPHRASE_T, YES_NO, CLASSIFY, TV),
    "qqp": ("glue/qqp", "paraphrase", pair("question1", "question2", YES_NO), PARAPHRASE_T, YES_NO, CLASSIFY, TV),
    "paws_wiki": ("paws_wiki", "paraphrase", pair("sentence1", "sentence2", YES_NO), PARAPHRASE_T, YES_NO, CLASSIFY, TV),
    "stsb": ("glue/stsb", "paraphrase", stsb, STSB_T, tuple("012345"), CLASSIFY, TV),
    # closed-book qa
    "arc_easy": ("ai2_arc/ARC-Easy", "closed_book_qa", arc, MC_QA_T, "per_example", CLASSIFY, TV),
    "arc_challenge": ("ai2_arc/ARC-Challenge", "closed_book_qa", arc, MC_QA_T, "per_example", CLASSIFY, TV),
    "natural_questions": ("natural_questions_open", "closed_book_qa", qa("question", lambda r: first(r["answer"])), CBQA_T, None, ("exact_match", "f1"), TV),
    "trivia_qa": ("trivia_qa/rc.nocontext", "closed_book_qa", qa("question", lambda r: text(r["answer"]["value"])), CBQA_T, None, ("exact_match", "f1"), TV),
    # struct to text
    "dart": ("dart", "struct_to_text", data_to_text(), STRUCT_T, None, ("bleu", "rouge"), TV),
    "e2e_nlg": ("e2e_cleaned", "struct_to_text", data_to_text(), STRUCT_T, None, ("bleu", "rouge"), TV),
    "web_nlg": ("web_nlg", "struct_to_text", data_to_text(with_context=True), STRUCT_T, None, ("bleu", "rouge"), TV),
    # reading comprehension
    "bool_q": ("bool_q", "reading_comprehension", lambda r: dict(context=text(r["passage"]), question=text(r["question"]) + "?", answer="yes" if bool(r["answer"]) else "no"), READING_T, YES_NO, CLASSIFY, TV),
    "drop": ("drop", "reading_comprehension", qa("question", lambda r: text(r["answer"]), "passage"), READING_T, None, ("exact_match", "f1"), TD),
    "multirc": ("super_glue/multirc", "reading_comprehension", multirc, READING_T, YES_NO, CLASSIFY, TV),
    "openbookqa": ("openbookqa", "reading_comprehension", openbookqa, MC_QA_T, "per_example", CLASSIFY, TV),
    "squad_v1": ("squad/v1.1", "reading_comprehension", qa("question", lambda r: first(r["answers"]["text"]), "context"), READING_T, None, ("exact_match", "f1"), TV),
    "squad_v2": ("squad/v2.0", "reading_comprehension", squad_v2, READING_T, None, ("exact_match", "f1"), TV),
    # reading comprehension with commonsense
    "cosmos_qa": ("cosmos_qa", "reading_comprehension_commonsense", multiple_choice_answers("answer", 4), READING_MC_T, "per_example", CLASSIFY, TV),
    "record": ("super_glue/record", "reading_comprehension_commonsense", record, READING_T, None, ("exact_match", "f1"), TV),
    # coreference
    "definite_pronoun_resolution": ("definite_pronoun_resolution", "coreference", coreference("sentence", "pronoun", "candidates"), COREFERENCE_T, "per_example", CLASSIFY, TT),
    "winogrande": ("winogrande", "coreference", coreference("sentence", None, ("option1", "option2")), COREFERENCE_T, "per_example", CLASSIFY, TV),
    # misc
    "coqa": ("coqa", "misc", coqa, READING_T, None, ("exact_match", "f1"), TT),
    "quac": ("quac", "misc", quac, READING_T, None, ("exact_match", "f1"), TV),
    "trec": ("trec", "misc", trec, TREC_T, TREC, CLASSIFY, TT),
    "cola": ("glue/cola", "misc", single("sentence", ("unacceptable", "acceptable")), COLA_T, ("unacceptable", "acceptable"), CLASSIFY, TV),
    "wic": ("super_glue/wic", "misc", wic, WIC_T, YES_NO, CLASSIFY, TV),
    "math_dataset": ("math_dataset/algebra__linear_1d", "misc", qa("question", lambda r: text(r["answer"])), MATH_T, None, ("exact_match",), TT),
    # summarization
    "aeslc": ("aeslc", "summarization", summary("email_body", lambda r: text(r["subject_line"])), SUMMARY_T, None, ("rouge",), TV),
    "cnn_dailymail": ("cnn_dailymail", "summarization", summary("article", lambda r: text(r["highlights"])), SUMMARY_T, None, ("rouge",), TV),
    "gigaword": ("gigaword", "summarization", summary("document", lambda r: text(r["summary"])), SUMMARY_T, None, ("rouge",), TV),
    "multi_news": ("multi_news", "summarization", summary("document", lambda r: text(r["summary"])), SUMMARY_T, None, ("rouge",), TV),
    "newsroom": ("newsroom", "summarization", summary("text", lambda r: text(r["summary"])), SUMMARY_T, None, ("rouge",), TV),
    "samsum": ("samsum", "summarization", summary("dialogue", lambda r: text(r["summary"])), SUMMARY_T, None, ("rouge",), TV),
    "xsum": ("xsum", "summarization", summary("document", lambda r: text(r["summary"])), SUMMARY_T, None, ("rouge",), TV),
    "ag_news_subset": ("ag_news_subset", "summarization", ag_news, TOPIC_T, AG_NEWS, CLASSIFY, TT),
}
# Translation: the foreign sentence is the source; the inverted template translates into it.
for _code, _builder, _splits in (
    ("cs", "wmt16_translate/cs-en", TV), ("de", "wmt16_translate/de-en", TV), ("fi", "wmt16_translate/fi-en", TV),
    ("ro", "wmt16_translate/ro-en", TV), ("ru", "wmt16_translate/ru-en", TV), ("tr", "wmt16_translate/tr-en", TV),
    ("fr", "wmt14_translate/fr-en", TV)):
  SPECS[f"{_builder.split('/')[0].replace('_translate', '')}_{_code}_en"] = (
      _builder, "translation", translation("en", _code), TRANSLATE_T, None, ("bleu",), _splits)

for _name, (_builder, _cluster, _preprocess, _templates, _options, _metrics, _splits) in SPECS.items():
  tasks.register(tasks.Task(
      name=_name, cluster=_cluster, source=source(_builder), preprocess=_preprocess, templates=_templates,
      metrics=_metrics, options=_options if isinstance(_options, tuple) else None,
      per_example_options=_options == "per_example", splits=_splits))

mixture.register("flan2021", tuple(SPECS))
