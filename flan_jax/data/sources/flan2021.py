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
# Every dataset has its own templates (FLAN 2021 wrote ten per dataset), so no instruction of a
# held-out cluster is trained on through another cluster (tests/test_leaks.py). ANLI's rounds and
# WMT's language pairs are configurations of one dataset and share its templates.
ANLI_T = (
    T("{premise}\n\nBased on the paragraph above, can we conclude that \"{hypothesis}\"?{options_}"),
    T("Read the text and decide whether the claim follows from it.\nText: {premise}\nClaim: {hypothesis}{options_}"),
    T("{premise}\nAn annotator wrote this to fool a model: \"{hypothesis}\" Is it true, given the text?{options_}"),
    T("Given the context below, is the statement entailed?\n\nContext: {premise}\n\nStatement: {hypothesis}{options_}"),
    T("Write a statement about this text that is \"{answer}\" to be true: {premise}", "{hypothesis}", inverted=True),
)
CB_T = (
    T("{premise}\n\nDoes the speaker commit to \"{hypothesis}\"?{options_}"),
    T("In this dialogue excerpt, is the embedded clause \"{hypothesis}\" presented as true?\n{premise}{options_}"),
    T("Excerpt: {premise}\nHypothesis: {hypothesis}\nDoes the excerpt entail the hypothesis?{options_}"),
    T("{premise} Is it true that {hypothesis}?{options_}"),
)
MNLI_T = (
    T("Premise: \"{premise}\"\nHypothesis: \"{hypothesis}\"\nDoes the premise entail the hypothesis?{options_}"),
    T("{premise}\n\nIf the sentence above is true, is the following one true as well?\n{hypothesis}{options_}"),
    T("Sentence from a genre of written or spoken English: {premise}\nDoes it follow that {hypothesis}{options_}"),
    T("Here is a premise: {premise}\nHere is a hypothesis: {hypothesis}\nCan the hypothesis be inferred?{options_}"),
    T("Premise: {premise}\nWrite a hypothesis that the premise makes \"{answer}\".", "{hypothesis}", inverted=True),
)
QNLI_T = (
    T("Does the sentence \"{sentence}\" answer the question \"{question}\"?{options_}"),
    T("Question: {question}\nSentence: {sentence}\nDoes the sentence contain the answer?{options_}"),
    T("{question}\n\nIs \"{sentence}\" a good answer to this question?{options_}"),
    T("Wikipedia sentence: {sentence}\nCan it answer \"{question}\"?{options_}"),
)
RTE_T = (
    T("{premise}\n\nQuestion with options: Based on the text, is \"{hypothesis}\" true?{options_}"),
    T("Text: {premise}\nCan we say \"{hypothesis}\" is textually entailed?{options_}"),
    T("{premise}\nDoes this news text support the claim that {hypothesis}{options_}"),
    T("Determine whether the first passage implies the second.\n1. {premise}\n2. {hypothesis}{options_}"),
)
SNLI_T = (
    T("Photo caption: {premise}\nIs it true that {hypothesis}{options_}"),
    T("A picture is described as \"{premise}\" Does that mean \"{hypothesis}\"?{options_}"),
    T("Caption: {premise}\nStatement about the picture: {hypothesis}\nIs the statement supported?{options_}"),
    T("If \"{premise}\", can we conclude \"{hypothesis}\"?{options_}"),
    T("Write a caption-style sentence that is \"{answer}\" given this caption: {premise}", "{hypothesis}", inverted=True),
)
WNLI_T = (
    T("{premise}\n\nAfter resolving the pronoun, does this mean \"{hypothesis}\"?{options_}"),
    T("Sentence: {premise}\nRewritten: {hypothesis}\nIs the rewrite a correct reading of the sentence?{options_}"),
    T("Read: \"{premise}\" Is it then correct that \"{hypothesis}\"?{options_}"),
)
COPA_T = (
    T("{premise}\nWhat is the {question}?{options_}"),
    T("Premise: {premise}\nChoose the more plausible {question}.{options_}"),
    T("\"{premise}\" Which of the following is the {question} of this?{options_}"),
    T("Here is an event: {premise} Pick its most likely {question}.{options_}"),
)
HELLASWAG_T = (
    T("{context}\n\nWhat happens next in this video caption?{options_}"),
    T("Finish the activity description: {context}{options_}"),
    T("How does this scene from a how-to video continue?\n{context}{options_}"),
    T("Write the start of a how-to description that could end with: {answer}", "{context}", inverted=True),
)
PIQA_T = (
    T("Goal: {context}\nWhich solution achieves the goal?{options_}"),
    T("How would you do this: {context}{options_}"),
    T("Physical commonsense. To {context}, what should one do?{options_}"),
    T("Write a goal that this method achieves: {answer}", "{context}", inverted=True),
)
STORY_CLOZE_T = (
    T("{context}\n\nWhat is the best ending of this story?{options_}"),
    T("Read the four-sentence story and choose its fifth sentence.\n{context}{options_}"),
    T("Story: {context}\nHow does it end?{options_}"),
    T("Write the first four sentences of a story that ends: {answer}", "{context}", inverted=True),
)
IMDB_T = (
    T("{text}\n\nWhat is the sentiment of this movie review?{options_}"),
    T("Did the reviewer enjoy the film?\n{text}{options_}"),
    T("Movie review: {text}\nIs this review positive or negative?{options_}"),
    T("Write a {answer} review of a movie.", "{text}", inverted=True),
)
SENTIMENT140_T = (
    T("Tweet: {text}\nWhat is the sentiment of this tweet?{options_}"),
    T("{text}\n\nIs the person who tweeted this happy or unhappy?{options_}"),
    T("How does the author of this tweet feel? \"{text}\"{options_}"),
    T("Write a tweet with a {answer} sentiment.", "{text}", inverted=True),
)
SST2_T = (
    T("Sentence from a film review: \"{text}\"\nIs it positive or negative?{options_}"),
    T("{text}\n\nDoes this phrase praise or criticise the movie?{options_}"),
    T("What is the sentiment of the phrase \"{text}\"?{options_}"),
    T("Write a short {answer} phrase about a movie.", "{text}", inverted=True),
)
YELP_T = (
    T("{text}\n\nIs this Yelp review positive or negative?{options_}"),
    T("Business review: {text}\nWould the writer recommend the place?{options_}"),
    T("How did the customer feel about this business?\n{text}{options_}"),
    T("Write a {answer} Yelp review of a restaurant.", "{text}", inverted=True),
)
MRPC_T = (
    T("{sentence1}\n{sentence2}\n\nDo these two news sentences report the same thing?{options_}"),
    T("Sentence 1: {sentence1}\nSentence 2: {sentence2}\nAre they paraphrases of each other?{options_}"),
    T("Is \"{sentence2}\" a rewording of \"{sentence1}\"?{options_}"),
    T("Rewrite this news sentence so that it keeps its meaning: {sentence1}", "{sentence2}", inverted=True),
)
QQP_T = (
    T("Question 1: {sentence1}\nQuestion 2: {sentence2}\nAre these questions asking the same thing?{options_}"),
    T("Would the answer to \"{sentence1}\" also answer \"{sentence2}\"?{options_}"),
    T("{sentence1}\n{sentence2}\n\nAre these two Quora questions duplicates?{options_}"),
    T("Ask the same question in other words: {sentence1}", "{sentence2}", inverted=True),
)
PAWS_T = (
    T("{sentence1}\n{sentence2}\n\nDo the two sentences mean the same, although their words overlap?{options_}"),
    T("Sentence A: {sentence1}\nSentence B: {sentence2}\nIs B a paraphrase of A or just a word scramble?{options_}"),
    T("Same words, same meaning? \"{sentence1}\" versus \"{sentence2}\"{options_}"),
)
STSB_T = (
    T("How similar are these sentences, on a scale from 0 to 5?\n{sentence1}\n{sentence2}{options_}"),
    T("Rate the similarity of \"{sentence1}\" and \"{sentence2}\" from 0 (unrelated) to 5 (same meaning).{options_}"),
    T("Sentence A: {sentence1}\nSentence B: {sentence2}\nSimilarity score (0-5)?{options_}"),
)
ARC_T = (
    T("{question}{options_}"),
    T("Grade-school science question: {question}\nPick the correct answer.{options_}"),
    T("Answer this science exam question: {question}{options_}"),
    T("Science test. Q: {question}\nWhich option is right?{options_}"),
)
NATURAL_QUESTIONS_T = (
    T("Answer this question someone typed into a search engine: {question}"),
    T("{question}?"),
    T("Search query: {question}\nShort answer:"),
    T("Write a search query whose short answer is {answer}.", "{question}", inverted=True),
)
TRIVIA_QA_T = (
    T("Trivia question: {question}\nAnswer:"),
    T("Answer this quiz question: {question}"),
    T("Pub quiz. {question}"),
    T("Write a trivia question whose answer is {answer}.", "{question}", inverted=True),
)
DART_T = (
    T("Describe these triples in a sentence: {table}"),
    T("Triples: {table}\nWrite a sentence that states them all."),
    T("Verbalise this knowledge-graph data: {table}"),
    T("Extract the facts of this sentence as triples: {answer}", "{table}", inverted=True),
)
E2E_T = (
    T("Restaurant attributes: {table}\nWrite a sentence describing the restaurant."),
    T("Here is data about a restaurant: {table}. Write a review-style sentence with all of it."),
    T("Turn this restaurant record into fluent text:\n{table}"),
    T("List the restaurant attributes mentioned in: {answer}", "{table}", inverted=True),
)
WEB_NLG_T = (
    T("Data from DBpedia: {table}\nWrite one or two sentences that say what it says."),
    T("Express these facts as text: {table}"),
    T("{table}\n\nWhat is a sentence about this data?"),
    T("Which DBpedia facts does this text state? {answer}", "{table}", inverted=True),
)
BOOLQ_T = (
    T("{context}\n\nCan we conclude that {question}{options_}"),
    T("Wikipedia passage: {context}\nYes or no: {question}{options_}"),
    T("Read the article and answer the yes/no question.\n\n{context}\n\nQuestion: {question}{options_}"),
    T("{context}\nBased on this, is the answer to \"{question}\" yes or no?{options_}"),
)
DROP_T = (
    T("{context}\n\nAnswer this question, which may need counting or arithmetic over the passage: {question}"),
    T("Passage: {context}\nQuestion: {question}\nAnswer (a number, date or span):"),
    T("Read the passage and work out the answer.\n{context}\n{question}"),
)
MULTIRC_T = (
    T("{context}\n\nQuestion: {question}{options_}"),
    T("Paragraph: {context}\nConsidering the whole paragraph, {question}{options_}"),
    T("Read the paragraph and judge the candidate answer.\n{context}\n{question}{options_}"),
)
OPENBOOKQA_T = (
    T("Use elementary science facts to answer: {question}{options_}"),
    T("Open-book science question. {question}{options_}"),
    T("Fill in the blank using a science fact: {question}{options_}"),
    T("Q: {question}\nWhich of these completes it best?{options_}"),
)
SQUAD_V1_T = (
    T("{context}\n\nAnswer the question using the article above: {question}"),
    T("Read this Wikipedia paragraph and answer the question.\n\n{context}\n\nQuestion: {question}"),
    T("Article: {context}\nQ: {question}\nA (a span of the article):"),
    T("Write a question about this paragraph whose answer is \"{answer}\":\n{context}", "{question}", inverted=True),
)
SQUAD_V2_T = (
    T("{context}\n\n{question} (If the text does not say, answer \"unanswerable\".)"),
    T("Paragraph: {context}\nQuestion: {question}\nAnswer from the paragraph, or say unanswerable:"),
    T("Answer the question about the passage if the passage answers it.\n\n{context}\n\n{question}"),
)
COSMOS_QA_T = (
    T("{context}\n\n{question}{options_}"),
    T("Read this personal story and answer with commonsense.\n{context}\nQuestion: {question}{options_}"),
    T("Story: {context}\nQ: {question}\nWhat is the most plausible answer?{options_}"),
)
RECORD_T = (
    T("{context}\n\nFill in the @placeholder: {question}"),
    T("News article: {context}\nWhich entity completes this sentence? {question}"),
    T("Read the passage, then complete the query.\n\n{context}\n\nQuery: {question}"),
)
DPR_T = (
    T("{sentence}\n\nWho or what is \"{pronoun}\" in this sentence?{options_}"),
    T("In \"{sentence}\", what does \"{pronoun}\" stand for?{options_}"),
    T("Sentence: {sentence}\nWhich candidate does \"{pronoun}\" refer to?{options_}"),
)
WINOGRANDE_T = (
    T("{sentence}\n\nWhat fills the blank (_)?{options_}"),
    T("Fill in the blank with the right option: {sentence}{options_}"),
    T("Which word makes this sentence make sense? \"{sentence}\"{options_}"),
)
COQA_T = (
    T("{context}\n\nA reader asks about the story: {question}"),
    T("Story: {context}\nConversation question: {question}\nAnswer in a few words:"),
    T("Read the story and answer the first question of a conversation about it.\n{context}\n{question}"),
)
QUAC_T = (
    T("{context}\n\nA student asks the teacher about this text: {question}"),
    T("Section of a Wikipedia biography: {context}\nQuestion in a dialogue: {question}\nAnswer with a span:"),
    T("Answer the question about the section, quoting it.\n{context}\n{question}"),
)
AESLC_T = (
    T("{document}\n\nWrite a subject line for this email."),
    T("Email body: {document}\nSubject:"),
    T("What would be a good subject line for this email?\n\n{document}"),
    T("Write an email with the subject line: {answer}", "{document}", inverted=True),
)
CNN_DM_T = (
    T("{document}\n\nWrite highlights of this news article."),
    T("Article: {document}\nHighlights:"),
    T("Summarize the key points of this CNN or Daily Mail story:\n\n{document}"),
    T("Write a news article with these highlights: {answer}", "{document}", inverted=True),
)
GIGAWORD_T = (
    T("{document}\n\nWrite a headline for this sentence."),
    T("Generate a short title for: {document}"),
    T("First sentence of a news story: {document}\nHeadline:"),
    T("Write the first sentence of a news story with the headline: {answer}", "{document}", inverted=True),
)
MULTI_NEWS_T = (
    T("{document}\n\nSummarize these news articles in one text."),
    T("Several articles about one event:\n{document}\nWrite their combined summary."),
    T("Merge these reports into one summary:\n\n{document}"),
)
NEWSROOM_T = (
    T("{document}\n\nWhat is a short summary of this article?"),
    T("Write a one-paragraph summary for a news feed:\n{document}"),
    T("News text: {document}\nSummary:"),
    T("Write an article that fits this summary: {answer}", "{document}", inverted=True),
)
SAMSUM_T = (
    T("{document}\n\nBriefly summarize this dialogue."),
    T("Chat conversation:\n{document}\nWhat was said, in a sentence or two?"),
    T("Dialogue: {document}\nSummary:"),
    T("Write a chat conversation that this summary describes: {answer}", "{document}", inverted=True),
)
XSUM_T = (
    T("{document}\n\nSummarize this BBC article in one sentence."),
    T("What is this article about, in a single sentence?\n\n{document}"),
    T("Article: {document}\nOne-sentence summary:"),
    T("Write a BBC-style article whose one-sentence summary is: {answer}", "{document}", inverted=True),
)
AG_NEWS_T = (
    T("{document}\n\nWhat is this news article about?{options_}"),
    T("Which section of a newspaper does this belong to?\n{document}{options_}"),
    T("Headline and lead: {document}\nTopic:{options_}"),
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
MATH_T = (T("Solve this equation for the variable: {question}"), T("Algebra problem: {question}\nAnswer:"),
          T("{question} What is the solution?"))
TRANSLATE_T = (
    T("Translate to {tgt_lang}:\n\n{source}"),
    T("{src_lang}: {source}\n{tgt_lang}:"),
    T("How is \"{source}\" said in {tgt_lang}?"),
    T("Translate from {tgt_lang} to {src_lang}: {answer}", "{source}", inverted=True),
)

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
    "anli_r1": ("anli/r1", "nli", nli("context", "hypothesis", NLI3), ANLI_T, NLI3, CLASSIFY, TV),
    "anli_r2": ("anli/r2", "nli", nli("context", "hypothesis", NLI3), ANLI_T, NLI3, CLASSIFY, TV),
    "anli_r3": ("anli/r3", "nli", nli("context", "hypothesis", NLI3), ANLI_T, NLI3, CLASSIFY, TV),
    "cb": ("super_glue/cb", "nli", nli("premise", "hypothesis", ("yes", "no", "it is not possible to tell")), CB_T, NLI3, CLASSIFY, TV),
    "mnli": ("glue/mnli", "nli", nli("premise", "hypothesis", NLI3), MNLI_T, NLI3, CLASSIFY, ("train", "validation_matched")),
    "qnli": ("glue/qnli", "nli", lambda r: dict(question=text(r["question"]), sentence=text(r["sentence"]), answer=label(r, "label", ("yes", "no"))), QNLI_T, YES_NO, CLASSIFY, TV),
    "rte": ("glue/rte", "nli", nli("sentence1", "sentence2", ("yes", "no")), RTE_T, YES_NO, CLASSIFY, TV),
    "snli": ("snli", "nli", nli("premise", "hypothesis", NLI3), SNLI_T, NLI3, CLASSIFY, TV),
    "wnli": ("glue/wnli", "nli", nli("sentence1", "sentence2", ("no", "yes")), WNLI_T, YES_NO, CLASSIFY, TV),
    # commonsense
    "copa": ("super_glue/copa", "commonsense", copa, COPA_T, "per_example", CLASSIFY, TV),
    "hellaswag": ("hellaswag", "commonsense", endings("context", "endings"), HELLASWAG_T, "per_example", CLASSIFY, TV),
    "piqa": ("piqa", "commonsense", piqa, PIQA_T, "per_example", CLASSIFY, TV),
    "story_cloze": ("story_cloze/2016", "commonsense", endings("context", "endings"), STORY_CLOZE_T, "per_example", CLASSIFY, ("validation", "test")),
    # sentiment
    "imdb_reviews": ("imdb_reviews", "sentiment", single("text", SENTIMENT), IMDB_T, SENTIMENT, CLASSIFY, TT),
    "sentiment140": ("sentiment140", "sentiment", sentiment140, SENTIMENT140_T, SENTIMENT, CLASSIFY, TT),
    "sst2": ("glue/sst2", "sentiment", single("sentence", SENTIMENT), SST2_T, SENTIMENT, CLASSIFY, TV),
    "yelp_polarity_reviews": ("yelp_polarity_reviews", "sentiment", single("text", SENTIMENT), YELP_T, SENTIMENT, CLASSIFY, TT),
    # paraphrase
    "mrpc": ("glue/mrpc", "paraphrase", pair("sentence1", "sentence2", YES_NO), MRPC_T, YES_NO, CLASSIFY, TV),
    "qqp": ("glue/qqp", "paraphrase", pair("question1", "question2", YES_NO), QQP_T, YES_NO, CLASSIFY, TV),
    "paws_wiki": ("paws_wiki", "paraphrase", pair("sentence1", "sentence2", YES_NO), PAWS_T, YES_NO, CLASSIFY, TV),
    "stsb": ("glue/stsb", "paraphrase", stsb, STSB_T, tuple("012345"), CLASSIFY, TV),
    # closed-book qa
    "arc_easy": ("ai2_arc/ARC-Easy", "closed_book_qa", arc, ARC_T, "per_example", CLASSIFY, TV),
    "arc_challenge": ("ai2_arc/ARC-Challenge", "closed_book_qa", arc, ARC_T, "per_example", CLASSIFY, TV),
    "natural_questions": ("natural_questions_open", "closed_book_qa", qa("question", lambda r: first(r["answer"])), NATURAL_QUESTIONS_T, None, ("exact_match", "f1"), TV),
    "trivia_qa": ("trivia_qa/rc.nocontext", "closed_book_qa", qa("question", lambda r: text(r["answer"]["value"])), TRIVIA_QA_T, None, ("exact_match", "f1"), TV),
    # struct to text
    "dart": ("dart", "struct_to_text", data_to_text(), DART_T, None, ("bleu", "rouge"), TV),
    "e2e_nlg": ("e2e_cleaned", "struct_to_text", data_to_text(), E2E_T, None, ("bleu", "rouge"), TV),
    "web_nlg": ("web_nlg", "struct_to_text", data_to_text(with_context=True), WEB_NLG_T, None, ("bleu", "rouge"), TV),
    # reading comprehension
    "bool_q": ("bool_q", "reading_comprehension", lambda r: dict(context=text(r["passage"]), question=text(r["question"]) + "?", answer="yes" if bool(r["answer"]) else "no"), BOOLQ_T, YES_NO, CLASSIFY, TV),
    "drop": ("drop", "reading_comprehension", qa("question", lambda r: text(r["answer"]), "passage"), DROP_T, None, ("exact_match", "f1"), TD),
    "multirc": ("super_glue/multirc", "reading_comprehension", multirc, MULTIRC_T, YES_NO, CLASSIFY, TV),
    "openbookqa": ("openbookqa", "reading_comprehension", openbookqa, OPENBOOKQA_T, "per_example", CLASSIFY, TV),
    "squad_v1": ("squad/v1.1", "reading_comprehension", qa("question", lambda r: first(r["answers"]["text"]), "context"), SQUAD_V1_T, None, ("exact_match", "f1"), TV),
    "squad_v2": ("squad/v2.0", "reading_comprehension", squad_v2, SQUAD_V2_T, None, ("exact_match", "f1"), TV),
    # reading comprehension with commonsense
    "cosmos_qa": ("cosmos_qa", "reading_comprehension_commonsense", multiple_choice_answers("answer", 4), COSMOS_QA_T, "per_example", CLASSIFY, TV),
    "record": ("super_glue/record", "reading_comprehension_commonsense", record, RECORD_T, None, ("exact_match", "f1"), TV),
    # coreference
    "definite_pronoun_resolution": ("definite_pronoun_resolution", "coreference", coreference("sentence", "pronoun", "candidates"), DPR_T, "per_example", CLASSIFY, TT),
    "winogrande": ("winogrande", "coreference", coreference("sentence", None, ("option1", "option2")), WINOGRANDE_T, "per_example", CLASSIFY, TV),
    # misc
    "coqa": ("coqa", "misc", coqa, COQA_T, None, ("exact_match", "f1"), TT),
    "quac": ("quac", "misc", quac, QUAC_T, None, ("exact_match", "f1"), TV),
    "trec": ("trec", "misc", trec, TREC_T, TREC, CLASSIFY, TT),
    "cola": ("glue/cola", "misc", single("sentence", ("unacceptable", "acceptable")), COLA_T, ("unacceptable", "acceptable"), CLASSIFY, TV),
    "wic": ("super_glue/wic", "misc", wic, WIC_T, YES_NO, CLASSIFY, TV),
    "math_dataset": ("math_dataset/algebra__linear_1d", "misc", qa("question", lambda r: text(r["answer"])), MATH_T, None, ("exact_match",), TT),
    # summarization
    "aeslc": ("aeslc", "summarization", summary("email_body", lambda r: text(r["subject_line"])), AESLC_T, None, ("rouge",), TV),
    "cnn_dailymail": ("cnn_dailymail", "summarization", summary("article", lambda r: text(r["highlights"])), CNN_DM_T, None, ("rouge",), TV),
    "gigaword": ("gigaword", "summarization", summary("document", lambda r: text(r["summary"])), GIGAWORD_T, None, ("rouge",), TV),
    "multi_news": ("multi_news", "summarization", summary("document", lambda r: text(r["summary"])), MULTI_NEWS_T, None, ("rouge",), TV),
    "newsroom": ("newsroom", "summarization", summary("text", lambda r: text(r["summary"])), NEWSROOM_T, None, ("rouge",), TV),
    "samsum": ("samsum", "summarization", summary("dialogue", lambda r: text(r["summary"])), SAMSUM_T, None, ("rouge",), TV),
    "xsum": ("xsum", "summarization", summary("document", lambda r: text(r["summary"])), XSUM_T, None, ("rouge",), TV),
    "ag_news_subset": ("ag_news_subset", "summarization", ag_news, AG_NEWS_T, AG_NEWS, CLASSIFY, TT),
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
