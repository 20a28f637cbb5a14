"""Conversation data: check_conversation's rules, JSONL / Parquet reading, and the built-in mixtures
(deterministic, disjoint splits, correct tool results). Tool results are recomputed here with
plain Python on the expression's literals, never with gptforge's calculator."""

import ast
import json
import math
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import SHARED, needs_shared

from gptforge.chat import mixtures as M
from gptforge.chat.conversation import check_conversation
from gptforge.chat.data import read_conversations, resolve_files
from gptforge.errors import UserError

U = lambda text: {"role": "user", "content": text}
A = lambda content: {"role": "assistant", "content": content}
S = lambda text: {"role": "system", "content": text}
P = lambda kind, text: {"type": kind, "text": text}
TOOL = [P("tool_call", "2+2"), P("tool_output", "4"), P("text", "4.")]


# ------------------------------------------------------------------------------------------------
# check_conversation: one case per rule


def test_valid_conversations_come_back_normalised():
    conv = [S("Be brief."), U("hi"), A("hello"), U("2+2?"), A(TOOL)]
    assert check_conversation(conv) == conv
    # extra keys dropped, tuples become lists, the input untouched, plain str content stays str
    raw = [{"role": "user", "content": "x", "name": "bob"},
           {"role": "assistant", "content": (P("text", "y"),)}]
    out = check_conversation(raw)
    assert out == [U("x"), A([P("text", "y")])]
    assert raw[0]["name"] == "bob" and out[0] is not raw[0]
    assert check_conversation([U("a"), A("b")])[1]["content"] == "b"


@pytest.mark.parametrize("messages, reason", [
    ("not a list", "not a list"),
    ([], "empty conversation"),
    (["hello"], "message 1 is not an object"),
    ([{"content": "x"}, A("y")], "message 1 has no role"),
    ([U("hi"), {"role": "bot", "content": "x"}], "unknown role 'bot' at message 2"),
    ([U("hi"), {"role": "assistant"}], "message 2 has no content"),
    ([U("hi"), A(None)], "message 2 has no content"),
    ([U(["hi"]), A("x")], "content of message 1 is not a string"),
    ([S("s"), U(42), A("x")], "content of message 2 is not a string"),
    ([S(["s"]), U("u"), A("x")], "content of message 1 is not a string"),
    ([U("hi"), A("x"), S("late"), U("u"), A("y")], "system message not first (message 3)"),
    ([A("x"), U("hi"), A("y")], "starts with an assistant turn at message 1"),
    ([S("s"), A("x")], "starts with an assistant turn at message 2"),
    ([S("s"), U("a"), U("b"), A("x")], "two user turns in a row at message 3"),
    ([U("a"), A("x"), A("y")], "two assistant turns in a row at message 3"),
    ([U("a"), A("x"), U("b")], "does not end with an assistant turn"),
    ([S("s")], "system message and no turns"),
    ([U("a"), A(7)], "neither a string nor a list of parts"),
    ([U("a"), A([])], "empty list of parts"),
    ([U("a"), A(["text"])], "message 2 part 1 is not an object"),
    ([U("a"), A([P("image", "x")])], "unknown part type 'image' in message 2 part 1"),
    ([U("a"), A([{"type": "text"}])], "text of message 2 part 1 is not a string"),
    ([U("a"), A([P("text", "x"), P("tool_output", "4")])], "tool_output without a tool_call"),
    ([U("a"), A([P("tool_call", "2+2"), P("text", "4")])], "tool_call without its tool_output"),
    ([U("a"), A([P("text", "x"), P("tool_call", "2+2")])], "tool_call without its tool_output"),
    ([U("  \n"), A("x")], "content of message 1 is empty"),
    ([U("a"), A([P("text", "")])], "text of message 2 part 1 is empty"),
    ([U("bad \ud800"), A("x")], "lone surrogate"),
])
def test_check_conversation_refuses(messages, reason):
    with pytest.raises(ValueError) as e:
        check_conversation(messages)
    assert reason in str(e.value)


def test_prompt_may_end_with_user_when_asked():
    assert check_conversation([U("a"), A("b"), U("c")], ends_with_assistant=False)[-1] == U("c")
    with pytest.raises(ValueError, match="two user turns"):
        check_conversation([U("a"), U("c")], ends_with_assistant=False)


# ------------------------------------------------------------------------------------------------
# reading files

GOOD = [U("hi"), A("hello")]
GOOD2 = [S("s"), U("2+2?"), A(TOOL)]


def write_jsonl(path, lines):
    path.write_bytes(b"".join((x if isinstance(x, bytes) else x.encode()) + b"\n" for x in lines))
    return path


def write_parquet(path, rows, row_group_size=None, extra_column=True):
    messages = pa.array(rows, type=pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())])))
    cols = {"messages": messages}
    if extra_column:  # datasets often carry other columns; only "messages" must be read
        cols = {"prompt": pa.array(["p"] * len(rows)), **cols}
    pq.write_table(pa.table(cols), path, row_group_size=row_group_size)
    return path


def test_jsonl_good_and_bad_rows_counted_with_file_and_line(tmp_path):
    f = write_jsonl(tmp_path / "a.jsonl", [
        json.dumps({"messages": GOOD, "source": "x"}),
        "",                                                # blank: ignored, not a row
        "{not json",                                       # line 3
        json.dumps({"text": "no messages"}),               # line 4
        json.dumps([1, 2]),                                # line 5
        json.dumps({"messages": [U("a"), U("b"), A("c")]}),  # line 6
        b"\xff\xfe bad utf-8",                             # line 7
        json.dumps({"messages": GOOD2}),
    ])
    convs, stats = read_conversations(f)
    assert stats.rows_read == 0  # lazy: nothing read before iterating
    assert list(convs) == [GOOD, GOOD2]
    assert (stats.rows_read, stats.rows_skipped, stats.rows_ok) == (7, 5, 2)
    assert stats.problems == [
        f"{f}:3: invalid JSON (Expecting property name enclosed in double quotes at column 2)",
        f"{f}:4: no 'messages' field",
        f"{f}:5: not a JSON object (got list)",
        f"{f}:6: two user turns in a row at message 2",
        f"{f}:7: not valid UTF-8",
    ]
    assert "read 7 rows from 1 file: 2 conversations, 5 skipped" in stats.summary()


def test_jsonl_strict_raises_on_first_bad_row(tmp_path):
    f = write_jsonl(tmp_path / "a.jsonl", [json.dumps({"messages": GOOD}),
                                           json.dumps({"messages": [U("x")]})])
    convs, _ = read_conversations(f, strict=True)
    assert next(convs) == GOOD
    with pytest.raises(UserError, match=re.escape(f"{f}:2: does not end with an assistant turn")):
        next(convs)


def test_parquet_rows_with_bad_rows_by_row_number(tmp_path):
    rows = [GOOD, [U("a"), {"role": "assistant", "content": None}], GOOD,
            [U("a"), {"role": "bot", "content": "x"}]]
    f = write_parquet(tmp_path / "train-00000-of-00001.parquet", rows)
    convs, stats = read_conversations(f, batch_rows=3)
    assert list(convs) == [GOOD, GOOD]
    assert (stats.rows_read, stats.rows_skipped) == (4, 2)
    assert stats.problems == [f"{f}:row 1: message 2 has no content",
                              f"{f}:row 3: unknown role 'bot' at message 2"]
    convs, _ = read_conversations(f, strict=True)
    with pytest.raises(UserError, match=re.escape(f"{f}:row 1: message 2 has no content")):
        list(convs)


def test_parquet_without_messages_column_or_not_parquet(tmp_path):
    f = tmp_path / "x.parquet"
    pq.write_table(pa.table({"text": ["a"]}), f)
    with pytest.raises(UserError, match="no 'messages' column"):
        list(read_conversations(f)[0])
    (tmp_path / "y.parquet").write_text("not parquet")
    with pytest.raises(UserError, match="y.parquet: not a Parquet file"):
        list(read_conversations(tmp_path / "y.parquet")[0])


def test_specs_directory_glob_list_and_missing(tmp_path):
    d = tmp_path / "data"
    (d / "sub").mkdir(parents=True)
    b = write_jsonl(d / "b.jsonl", [json.dumps({"messages": GOOD2})])
    a = write_parquet(d / "sub" / "a.parquet", [GOOD])
    (d / "notes.txt").write_text("ignored")
    assert resolve_files(d) == [b, a]  # sorted by path: "b.jsonl" < "sub/..."
    assert resolve_files(str(d / "**" / "*.parquet")) == [a]
    assert resolve_files([a, str(b)]) == [a, b]
    convs, stats = read_conversations(d)
    assert list(convs) == [GOOD2, GOOD] and stats.files == [b, a]
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(UserError, match=re.escape(str(missing))):
        read_conversations(missing)  # at once, before any iteration
    with pytest.raises(UserError, match="matches no"):
        resolve_files(str(tmp_path / "*.zip"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no"):
        resolve_files(tmp_path / "empty")
    with pytest.raises(UserError, match="expected .jsonl or .parquet"):
        resolve_files(d / "notes.txt")


def test_parquet_is_read_in_bounded_row_batches(tmp_path, monkeypatch):
    """Never the whole table: only iter_batches, one batch pulled per batch_rows conversations, and
    Arrow's allocations stay far below the file's decoded size."""
    big = "x" * 2000
    rows = [[U(f"q{i} {big}"), A(f"a{i} {big}")] for i in range(8000)]  # ~32 MB of text decoded
    f = write_parquet(tmp_path / "big.parquet", rows, row_group_size=500, extra_column=False)
    del rows
    forbid = lambda *a, **k: pytest.fail("read the whole table")
    monkeypatch.setattr(pq.ParquetFile, "read", forbid)
    monkeypatch.setattr(pq, "read_table", forbid)
    pulled = []
    real = pq.ParquetFile.iter_batches

    def spy(self, *args, **kwargs):
        for batch in real(self, *args, **kwargs):
            pulled.append(batch.num_rows)
            yield batch

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    convs, stats = read_conversations(f, batch_rows=100)
    assert next(convs)[0]["content"].startswith("q0 ")
    assert pulled == [100]
    peak = 0
    for _ in convs:
        peak = max(peak, pa.total_allocated_bytes())
    assert stats.rows_ok == 8000 and max(pulled) <= 100 and sum(pulled) == 8000
    # a row group (~2 MB decoded), a batch and readahead (~6 MB measured), not the whole ~31 MB table
    assert peak < 12 * 2**20, peak


# ------------------------------------------------------------------------------------------------
# mixtures

# what a tool expression may hold, checked here independently of gptforge's calculator
_ALLOWED = (ast.Expression, ast.Constant, ast.BinOp, ast.UnaryOp, ast.USub, ast.UAdd, ast.Add, ast.Sub,
            ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow, ast.Call, ast.Attribute, ast.Name, ast.Load)


def tool_value(expression):
    """The expression's value by Python itself, after checking it is a plain calculator expression."""
    tree = ast.parse(expression, mode="eval")
    for node in ast.walk(tree):
        assert isinstance(node, _ALLOWED), (expression, node)
        if isinstance(node, ast.Constant):
            assert type(node.value) in (int, float, str), expression
        if isinstance(node, ast.Name):
            assert node.id == "len", expression
        if isinstance(node, ast.Attribute):
            assert node.attr == "count" and isinstance(node.value, ast.Constant), expression
    return eval(compile(tree, "<tool>", "eval"), {"__builtins__": {}, "len": len})


def check_tools(conv):
    """Every tool_output equals the Python value of its tool_call; returns the (expr, value) pairs."""
    assert check_conversation(conv) == conv
    calls = []
    for msg in conv:
        if msg["role"] == "assistant" and isinstance(msg["content"], list):
            parts = msg["content"]
            for call, out in zip(parts, parts[1:], strict=False):
                if call["type"] == "tool_call":
                    assert out["type"] == "tool_output"
                    value = tool_value(call["text"])
                    assert math.isclose(float(out["text"]), value, rel_tol=1e-9, abs_tol=1e-6), (call, out)
                    if isinstance(value, int):
                        assert out["text"] == str(value)
                    calls.append((call["text"], value))
    return calls


def key(name, conv):
    """The item's identity, derived here from its content: what must never cross the split."""
    first_user = next(m["content"] for m in conv if m["role"] == "user")
    if name == "arithmetic":
        expression = next(p["text"] for p in conv[-1]["content"] if p["type"] == "tool_call")
        a, op, b = re.fullmatch(r"(\d+)(\+|-|\*|//|/|%)(\d+)", expression).groups()
        return (op, *sorted((int(a), int(b)))) if op in "+*" else (op, int(a), int(b))
    if name == "spelling":
        expression = next(p["text"] for p in conv[-1]["content"] if p["type"] == "tool_call")
        return re.search(r'"([a-z]+)"', expression).group(1)
    if name == "gsm8k":
        return " ".join(first_user.split())
    return " ".join(re.findall(r"[a-z0-9']+", first_user.casefold()))


GENERATED = {"arithmetic": 3000, "spelling": 2000}
FINITE = ["identity", "smalltalk", pytest.param("gsm8k", marks=needs_shared)]


@pytest.mark.parametrize("name", [*GENERATED, *FINITE])
def test_mixture_deterministic_disjoint_and_correct(name):
    n = GENERATED.get(name)
    train = list(M.mixture(name, "train", n, seed=1))
    test = list(M.mixture(name, "test", n, seed=1))
    assert len(test) > 0 and (n is not None or len(train) > 4 * len(test))
    assert list(M.mixture(name, "train", 50, seed=1)) == train[:50]  # same seed, same stream
    other = list(M.mixture(name, "train", n, seed=2))
    assert other != train
    train_keys = {key(name, c) for c in train + other}  # the split does not depend on the seed
    test_keys = {key(name, c) for c in test}
    assert not train_keys & test_keys
    for conv in train + test:
        calls = check_tools(conv)
        if name in GENERATED:
            (expression, value), = calls
            answer = conv[-1]["content"][-1]["text"]  # the answer states the tool's result
            words = {0: "not appear", 1: "once", 2: "twice"}
            assert re.search(rf"(?<![\d.]){int(value)}(?![\d])", answer) or words.get(value, "@") in answer
    if n is None:  # a finite set: each item once, and more than that repeats in a new order
        assert len({json.dumps(c) for c in train}) == len(train)
        again = list(M.mixture(name, "train", len(train) + 5, seed=1))
        assert again[: len(train)] == train and len(again) == len(train) + 5


def test_arithmetic_operands_ops_and_max_digits():
    ops = set()
    for max_digits, limit in ((3, 999), (4, 9999)):
        for conv in M.mixture("arithmetic", "train", 1500, seed=3, max_digits=max_digits):
            expression = next(p["text"] for p in conv[-1]["content"] if p["type"] == "tool_call")
            a, op, b = re.fullmatch(r"(\d+)(\+|-|\*|//|/|%)(\d+)", expression).groups()
            a, b = int(a), int(b)
            assert a <= limit and b <= limit
            if op == "/":
                assert b and a % b == 0  # exact division only
            if op in ("//", "%"):  # stated as integer division / remainder in words
                assert re.search(r"rounded down|integer division|whole|remainder|mod|left over|%|boxes",
                                 conv[0]["content"])
            ops.add(op)
    assert ops == {"+", "-", "*", "/", "//", "%"}
    with pytest.raises(ValueError, match="max_digits"):
        next(M.mixture("arithmetic", max_digits=5))


def test_spelling_words_are_real_and_spelled_right():
    words = M.spelling_words()
    assert len(words) > 50_000 and "strawberry" in words and all(w.isalpha() and w.islower() for w in words)
    for conv in M.mixture("spelling", "train", 500, seed=4):
        for part in conv[-1]["content"]:
            m = re.search(r"(\w+) is spelled ([a-z-]+)\.", part["text"])
            if m:
                assert m.group(2) == "-".join(m.group(1))


def test_identity_speaks_of_gptforge_and_smalltalk_comes_from_chatterbot():
    answers = " ".join(c[1]["content"] for c in M.mixture("identity", "train"))
    for needle in ("gptforge", "CPU", "calculator", "mistakes", "no internet access"):
        assert needle in answers
    items = M.smalltalk_items()
    assert len(items) > 300
    assert any(c[0]["content"] == "Hello" and c[1]["content"] == "Hi" for _, c in items)


def test_gsm8k_annotations_become_tool_parts(tmp_path, monkeypatch):
    rows = [{"question": "Q1 clips?",
             "answer": "Sold 48/2 = <<48/2=24>>24 in May.\nIn all <<48+24=72>>72.\n#### 72"},
            {"question": "Q2?", "answer": "Pay 12/60 = $<<12/60=0.2>>0.2.\n#### 1,200"},
            {"question": "Q3 wrong?", "answer": "It is <<2*3=7>>7.\n#### 7"},  # refused: 2*3 is not 7
            {"question": "Q4 plus?", "answer": "It is <<+3=3>>3.\n#### 3"}]   # unary plus: accepted
    write_jsonl(tmp_path / "train.jsonl", [json.dumps(r) for r in rows])
    (tmp_path / "test.jsonl").write_text("the evaluation split: must never be opened\n")
    opened = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda f, *a, **k: opened.append(str(f)) or real_open(f, *a, **k))
    items = dict(M.gsm8k_items(tmp_path))
    assert not any(p.endswith("test.jsonl") for p in opened)
    assert set(items) == {"Q1 clips?", "Q2?", "Q4 plus?"}
    assert items["Q1 clips?"][1]["content"] == [
        P("text", "Sold 48/2 = "), P("tool_call", "48/2"), P("tool_output", "24"),
        P("text", "24 in May.\nIn all "), P("tool_call", "48+24"), P("tool_output", "72"),
        P("text", "72.\n#### 72")]
    assert items["Q2?"][1]["content"][2] == P("tool_output", "0.2")
    assert items["Q2?"][1]["content"][-1]["text"].endswith("#### 1200")
    with pytest.raises(UserError, match=r"nowhere.*train\.jsonl: GSM8K training set not found"):
        M.mixture("gsm8k", gsm8k_dir=tmp_path / "nowhere")


@needs_shared
def test_gsm8k_mixture_never_holds_a_real_test_problem():
    lines = (SHARED / "evals" / "gsm8k" / "test.jsonl").read_text().splitlines()
    real_test = {" ".join(json.loads(line)["question"].split()) for line in lines}
    ours = {key("gsm8k", c) for split in M.SPLITS for c in M.mixture("gsm8k", split)}
    assert len(ours) > 7000 and not ours & real_test


def test_unknown_mixture_and_split():
    with pytest.raises(UserError, match="unknown mixture"):
        M.mixture("poetry")
    with pytest.raises(ValueError, match="split"):
        M.mixture("identity", "val")


def test_calculate():
    assert M.calculate("123*456") == "56088"
    assert M.calculate("1234/2") == "617" and M.calculate("12/60") == "0.2"
    assert M.calculate("0.1+0.2") == "0.3" and M.calculate("1/3") == "0.333333333333"
    assert M.calculate("-0.0*1") == "0" and M.calculate("0.2*50") == "10"
    assert M.calculate('"strawberry".count("r")') == "3" and M.calculate('len("word")') == "4"
    assert M.calculate("-(7//2) % 5 ** 2") == str(-(7 // 2) % 5**2)
    for bad in ("__import__('os')", "x+1", "True+1", "9**9**9", "1/0", "'a'", "abs(-1)",
                "'ab'.upper()", "1 +"):
        with pytest.raises(ValueError):
            M.calculate(bad)
    assert M.MIXTURES == ("arithmetic", "spelling", "identity", "smalltalk", "gsm8k")


# ------------------------------------------------------------------------------------------------
# phrasing families and the verifiable tasks

_NUMBER_WORD = (r"\b(?:(?:twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety)(?:-(?:one|two|three|four|"
                r"five|six|seven|eight|nine))?|zero|one hundred|one|two|three|four|five|six|seven|eight|nine|"
                r"ten|eleven|twelve|thirteen|fourteen|fifteen|sixteen|seventeen|eighteen|nineteen)\b")


def skeleton(name, conv):
    """The question with its content taken out (numbers, names, things, the word and letter), case
    and punctuation dropped: what is left is the phrasing, decoration included."""
    q = conv[0]["content"].lower()
    if name == "arithmetic":
        q = re.sub(r"\d+", "N", q)
        q = re.sub(_NUMBER_WORD, "N", q)
        q = re.sub(r"\b(" + "|".join(n.lower() for n in M._NAMES + M._THINGS) + r")\b", "X", q)
    else:
        call = next(p["text"] for p in conv[-1]["content"] if p["type"] == "tool_call")
        word = re.search(r'"([a-z]+)"', call).group(1)
        q = re.sub(rf"\b{word}\b", "W", q)
        letter = re.search(r'count\("([a-z])"\)', call)
        if letter:
            q = re.sub(rf"\b{letter.group(1)}(?='s\b|s\b|\b)", "L", q)
    return " ".join(re.findall(r"[a-z]+|[NXWL]|[+*/%x-]", q.replace("NXWL", "")))


@pytest.mark.parametrize("name", ["arithmetic", "spelling"])
def test_test_split_phrasing_families_never_occur_in_the_train_split(name):
    """Asserted over the generator's text: no phrasing of the test split is ever trained on."""
    train = {skeleton(name, c) for seed in (0, 1) for c in M.mixture(name, "train", 3000, seed=seed)}
    test = {skeleton(name, c) for c in M.mixture(name, "test", 1500, seed=0)}
    assert len(train) > 200 and len(test) > 50  # many phrasings, composed
    assert not train & test, sorted(train & test)[:5]
    # the families themselves: train items only of train families, test items only of held-out ones
    from gptforge.chat import tasks

    for task in ("arithmetic", "letter_count"):
        for split, phrasings in (("train", "train"), ("test", "test"), ("test", "train")):
            fams = {f for _, _, f in tasks.items(task, split, 400, phrasings=phrasings)}
            assert fams and all(tasks.held_out(f) == (phrasings == "test") for f in fams)
            assert len(fams) >= (3 if phrasings == "test" else 8)


def test_composed_questions_use_words_decoration_and_right_answers():
    convs = list(M.mixture("arithmetic", "train", 3000, seed=7, max_digits=3))
    questions = [c[0]["content"] for c in convs]
    assert sum(bool(re.search(_NUMBER_WORD, q.lower())) for q in questions) > 150  # numbers in words
    assert sum(q == q.lower() for q in questions) > 300  # lower case
    assert sum(q.startswith(("Quick question: ", "Hey, ", "Math question: ")) for q in questions) > 50
    for word in ("plus", "add", "sum", "minus", "subtract", "difference", "times", "multiply", "product",
                 "divided by", "split", "quotient", "share"):
        assert any(word in q.lower() for q in questions), word
    for conv in convs:  # a number said in words is the same number in the tool call
        q = conv[0]["content"].lower().removeprefix("here's one: ")  # a preamble's "one" is no operand
        call = next(p["text"] for p in conv[-1]["content"] if p["type"] == "tool_call")
        for n in range(101):
            if re.search(rf"(?<![\w-]){M.number_words(n)}(?![\w-])", q):
                assert str(n) in re.findall(r"\d+", call), (q, call)
    assert [M.number_words(n) for n in (0, 13, 20, 42, 99, 100)] == [
        "zero", "thirteen", "twenty", "forty-two", "ninety-nine", "one hundred"]
    with pytest.raises(ValueError):
        M.number_words(101)


def test_social_items_and_checker():
    from gptforge.chat import tasks

    items = tasks.items("social", "test", 500)
    topics = {ref for _, ref, _ in items}
    assert {"greeting", "thanks", "creative", "facts"} <= topics and len(items) >= 15
    train_q = {c[0]["content"] for c in M.mixture("identity", "train")}
    assert not {p[0]["content"] for p, _, _ in items} & train_q  # held-out questions
    for topic, (_, answers) in M.IDENTITY.items():  # every training answer passes its own check
        for answer in answers:
            assert tasks.reply_correct("social", [P("text", answer)], topic), (topic, answer)
    assert not tasks.reply_correct("social", [P("text", "Hello!"), P("tool_call", "1+1"),
                                              P("tool_output", "2")], "greeting")
    assert not tasks.reply_correct("social", [P("text", "49 x 7 = 49.")], "creative")
    assert not tasks.reply_correct("social", [P("text", "This is fine")], "greeting")  # "hi" in "this"
    assert tasks.reply_correct("arithmetic", TOOL, "4") and not tasks.reply_correct("arithmetic", TOOL, "5")
    assert tasks.reply_correct("gsm8k", [P("text", "so 3 then 7\n#### 12")], "12")
    with pytest.raises(ValueError):
        tasks.items("poetry")


def test_letter_count_checker_reads_the_answers_the_mixture_writes():
    """Every letter-count answer form of the spelling mixture scores right against its own count
    (words included: "once", "twice", "does not appear"), and a wrong count scores wrong."""
    from gptforge.chat import tasks

    forms = set()
    for conv in M.mixture("spelling", "train", 600, seed=5):
        parts = conv[-1]["content"]
        call = next(p["text"] for p in parts if p["type"] == "tool_call")
        if ".count(" not in call:
            continue
        ref = next(p["text"] for p in parts if p["type"] == "tool_output")
        reply = [p for p in parts if p["type"] == "text"][-1:]
        forms.add(re.sub(r"\d+", "N", reply[0]["text"].split(" in ")[0]))
        assert tasks.reply_correct("letter_count", parts, ref), (reply, ref)
        assert not tasks.reply_correct("letter_count", parts, str(int(ref) + 1)), (reply, ref)
    assert {"N", "The letter t appears once", "The letter e appears twice"} & forms
    assert any("does not appear" in f for f in forms) and any("once" in f for f in forms)
    assert tasks.last_count("There are 3 r's in strawberry, not 2.") == "2"
    assert tasks.last_count("no digits here") is None
