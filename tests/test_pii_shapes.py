"""Issue 15's remaining shapes: credential pairs without a password word, phones without a phone word,
names inside handles and after request verbs, one person one placeholder across `name` and text;
and the look-alikes (versions, hashes, order and invoice numbers) that must stay."""

from __future__ import annotations

import re

import polars as pl
import pytest

from curator.config import PiiConfig
from curator.record import make_record, to_table
from curator.steps.pii import PiiScrub, build_analyzer
from curator.steps.pii_recognizers import keyed_values, looks_like_password


@pytest.fixture(scope="module")
def step() -> PiiScrub:
    return PiiScrub(PiiConfig(), seed=0, analyzer=build_analyzer(PiiConfig()))


def scrub_record(step: PiiScrub, msgs: list[dict], language: str | None = None) -> list[dict]:
    """The record's turns after the step, as the engine hands it a batch (with the Language step's label)."""
    rec = make_record(msgs, source={"file": "t", "index": 0, "format": "test"})
    df = pl.from_arrow(to_table([rec]))
    assert isinstance(df, pl.DataFrame)
    df = df.with_row_index("row").with_columns(pl.col("row").cast(pl.Int64))
    out = step(df if language is None else df.with_columns(pl.lit(language).alias("language")))
    return out["messages"][0].to_list()


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("The router admin login is admin / Qr7!dke#39 and my neighbour uses it too", "Qr7!dke#39"),
        ("login: ana.support / aB3kd9LqP", "aB3kd9LqP"),
        ("creds for the staging box: root Xy9#kq2L", "Xy9#kq2L"),
        ("pw aB3kd9LqP, don't share", "aB3kd9LqP"),
        ("user/pass admin:Tq9$xxLm2", "Tq9$xxLm2"),
        ("the wifi passcode is Kd8#mq22 ok", "Kd8#mq22"),
        ("sign in with jane@corp.io and Zz9!kkq0a then open billing", "Zz9!kkq0a"),
    ],
)
def test_credentials_without_a_password_word_are_removed(step: PiiScrub, text: str, secret: str) -> None:
    assert secret not in step.scrub_text(text)


@pytest.mark.parametrize(
    "text",
    [
        "Log in to v2.3.1 and check order INV-2024-004213 and ticket PROJ-4821.",
        "login to the staging console with MySQL8 and Python3, then sign in as admin",
        "After login, the commit 9fceb02d0ae598e95dc970b74767f19372d61af8 set colour #FFAA00 and C++17.",
        "Sign in, then open /home2?tab=1&x=2 and pay $1,299.00 for 3 seats",
    ],
)
def test_login_look_alikes_are_kept(step: PiiScrub, text: str) -> None:
    assert step.scrub_text(text) == text


def test_password_shape_test() -> None:
    assert looks_like_password("Qr7!dke#39") and looks_like_password("aB3kd9LqP")
    for word in ("Python3", "us-east-1", "INV-2024-0042", "9fceb02d", "v2.3.1", "MySQL8", "password1", "#A1234"):
        assert not looks_like_password(word), word


@pytest.mark.parametrize(
    ("text", "phone"),
    [
        ("You can get me on 0487 23 46 71 most evenings.", "0487 23 46 71"),
        ("Ring 0660 565 36 45 for the office.", "0660 565 36 45"),
    ],
)
def test_phones_without_a_phone_word_are_removed(step: PiiScrub, text: str, phone: str) -> None:
    out = step.scrub_text(text)
    assert not any(group in out for group in phone.split()[1:]), out


def test_numbers_in_the_digit_gate_get_no_street_or_id_guess(step: PiiScrub) -> None:
    text = "The event has timestamp 1700000000000, port 8080, page 12 of 340 and build 2024 0501 7."
    assert step.scrub_text(text) == text


def test_handles_are_replaced_whole_and_match_the_name_field(step: PiiScrub) -> None:
    msgs = [
        {"role": "user", "name": "ana.support", "content": "Hi, this is ana.support again. Ask j.smith too."},
        {"role": "assistant", "content": "Hello Ana! Tell Borkowski, Maciej Borkowski's brother, I said hi."},
    ]
    turns = scrub_record(step, msgs)
    name, first, second = turns[0]["name"], turns[0]["content"], turns[1]["content"]
    assert name.startswith("<PERSON_") and f"this is {name} again" in first  # same person, same number
    assert "smith" not in first.lower() and "j." not in first  # the whole handle, not "j.<PERSON_2>"
    assert f"Hello {name}!" in second  # "Ana" is the first name in the handle
    assert second.startswith(f"Hello {name}! Tell <PERSON_")  # the verb stays, the person goes
    assert "Borkowski" not in second


@pytest.mark.parametrize(
    ("text", "gone"),
    [
        ("Send it to 78 Untere Donaulände 33\nIzsófalva\n, BZ\n Equatorial Guinea 42309", ["Izsófalva", "42309"]),
        ("I live at 25 Schaarsteinweg 58 Apt. 584 Ebermannsdorf Belarus and love it", ["Ebermannsdorf"]),
        ("ship to usnv sandberg\nfpo aa 18532", ["sandberg", "18532"]),
        ("unit 8087 box 7596\ndpo ae 50606", ["8087", "50606"]),
    ],
)
def test_address_tails_after_commas_units_and_in_lower_case(step: PiiScrub, text: str, gone: list[str]) -> None:
    out = step.scrub_text(text, mode="patterns")
    assert not any(value in out for value in gone), out


def test_address_after_a_unit_stops_at_the_next_sentence(step: PiiScrub) -> None:
    assert step.scrub_text("Flat at 12 Main Street Apt 4 Is that right?", mode="patterns").endswith(" Is that right?")


def test_lower_case_names_are_read_by_the_tagger(step: PiiScrub) -> None:
    out = step.scrub_text("vittore, can i please speak to your boss? my colleague jesenko said you would help")
    assert "vittore" not in out and "jesenko" not in out, out


@pytest.mark.parametrize(
    ("text", "gone"),
    [
        (
            "Envelope:\nVeerle Zijlmans\nBrianboulevard 828\n4412IT Finsterwolde\nNetherlands",
            ["Brianboulevard", "4412IT"],
        ),
        ("at home: Paťanka 9\n183 58 Nová Bystřice\nCzech Republic", ["Paťanka", "183 58"]),
        ("Rita Kocsis\nFürdőfai út 147.\nH-2125 Nagyhetvenkövesd\nHungary", ["Fürdőfai", "H-2125"]),
    ],
)
def test_postcode_town_lines_take_the_street_line_above(step: PiiScrub, text: str, gone: list[str]) -> None:
    out = step.scrub_text(text)
    assert not any(value in out for value in gone), out


def test_numbered_headings_are_no_postcode_lines(step: PiiScrub) -> None:
    for text in ("Chapter 3\n2024 Results were good\nThanks", "Python 3\n2024 Edition"):
        assert step.scrub_text(text, mode="patterns") == text


def test_names_keep_their_post_nominals_and_possessions(step: PiiScrub) -> None:
    out = step.scrub_text("Follow up with Ryan Bagy MD in 2 months. Here's Fiammetta's address.")
    assert "MD" not in out and "Fiammetta" not in out, out
    assert step.scrub_text("The Company's address is on the invoice.") == "The Company's address is on the invoice."


def test_a_dot_inside_a_sentence_does_not_hide_it_from_the_tagger(step: PiiScrub) -> None:
    """An email or a version in a sentence used to drop the whole sentence from Rampart's windows."""
    out = step.scrub_text("Write an out-of-office reply. Urgent matters: Jørgen on 9472 7916, or email jo@firma.dk.")
    assert "Jørgen" not in out and "9472" not in out and "7916" not in out, out


def test_a_surname_named_by_its_cue_joins_the_first_name(step: PiiScrub) -> None:
    msgs = [
        {
            "role": "user",
            "content": "I'm Sylwia. Deszcz is my last name. Can you spell Sylwia Deszcz in NATO alphabet?",
        },
        {"role": "assistant", "content": "Sure, Sylwia Deszcz: ..."},
    ]
    first, second = (t["content"] for t in scrub_record(step, msgs))
    assert "Deszcz" not in first + second and "Sylwia" not in first + second
    assert first == "I'm <PERSON_1>. <PERSON_1> is my last name. Can you spell <PERSON_1> in NATO alphabet?"
    assert second == "Sure, <PERSON_1>: ..."


@pytest.mark.parametrize(
    ("text", "gone"),
    [
        ("Shipping label: Na Cikánce 58???314 65 Podivín???Czech Republic", ["Cikánce", "314 65", "Podivín"]),
        ("Shipping label: Bertram-Hentschel-Platz 6/7???34183 Angermünde", ["Hentschel", "6/7", "34183"]),
        ("Envelope:\nLucas Leão\nFavela Mathias Rocha\n09507185 Azevedo\nBrazil", ["Favela", "09507185"]),
        ("label: 3603 Laurie Lights???86687 Kristinton???United States", ["Laurie", "86687"]),
    ],
)
def test_address_lines_split_by_question_marks_and_street_types_before_the_name(
    step: PiiScrub, text: str, gone: list[str]
) -> None:
    out = step.scrub_text(text)
    assert not any(value in out for value in gone), out


def test_title_case_headings_with_street_words_are_kept(step: PiiScrub) -> None:
    text = "In 3 Easy Ways you can learn it. Top 10 Golf Course tips for Spring 2024."
    assert step.scrub_text(text, mode="patterns") == text


def test_a_user_and_secret_pair_after_a_login_word(step: PiiScrub) -> None:
    out = step.scrub_text("The router admin login is admin / uqJtcEW6 and sign in with root / password123 too")
    assert "uqJtcEW6" not in out and "password123" not in out, out
    assert step.scrub_text("Log in at 10:30 with the admin account / settings page") == (
        "Log in at 10:30 with the admin account / settings page"
    )


@pytest.mark.parametrize(
    ("text", "gone", "kept"),
    [
        ("Ship to:\n 74 Västerviksgatan 2\n??? Suite 052\n??? MORJÄRV\n??? Iceland 18487", ["MORJÄRV", "18487"], ""),
        (
            "Taxi to Jäämerentie 89 Bjerke Street\n Apt. 267\n PETÄJÄVESI\n Japan 26218. "
            "Please call me when you're here.",
            ["PETÄJÄVESI", "26218"],
            " Please call me when you're here.",
        ),
        ("65 machelsesteenweg 197\n apt. 581\n montzen\n cape verde 30038", ["montzen", "30038"], ""),
        ("Reginald Gorski\n\n32 2914 184th Street\n Apt. 333\n Edmonton\n\n Saint Lucia 07570", ["07570"], ""),
    ],
)
def test_address_lines_after_units_blank_lines_and_up_to_the_sentence_end(
    step: PiiScrub, text: str, gone: list[str], kept: str
) -> None:
    out = step.scrub_text(text)
    assert not any(value in out for value in gone) and out.endswith(kept), out


def test_tagger_address_guesses_need_a_street_word_a_number_or_a_neighbour(step: PiiScrub) -> None:
    assert step.scrub_text("Address: 12 Main Street\nSpringfield: call me first").endswith(": call me first")
    assert "2448.5 miles" in step.scrub_text("The distance from here to Los Angeles is approximately 2448.5 miles.")


def test_six_digit_local_numbers_only_after_a_phone_word(step: PiiScrub) -> None:
    assert "93" not in step.scrub_text("How can we reach you? You can call 33 93 31")
    for text in ("Order 339331 shipped", "I have 123456 points and 33 93 31 votes"):
        assert step.scrub_text(text) == text


def test_a_request_verb_inside_a_sentence_names_the_person_it_is_about(step: PiiScrub) -> None:
    turns = scrub_record(step, [{"role": "user", "content": "Text Job at 9472 7916 and tell Job the meeting moved."}])
    assert turns[0]["content"] == "Text <PERSON_1> at <PHONE_1> and tell <PERSON_1> the meeting moved."
    text = "Ask Questions early. Tell Python to sort it. Please ask ChatGPT or ask Google Maps. I will message Support."
    assert step.scrub_text(text) == text


def test_the_line_after_an_address_is_kept_when_it_is_a_sentence(step: PiiScrub) -> None:
    for after in ("Thanks for the help, I really appreciate everything you did", "Thanks. See you"):
        assert step.scrub_text(f"Send it to:\n12 Main Street\n{after}", mode="patterns").endswith(f"\n{after}")


def test_a_one_word_name_after_a_sign_off_is_removed(step: PiiScrub) -> None:
    """spaCy finds the same span with a higher score; its lone line-initial guess used to be dropped."""
    assert step.scrub_text("Thanks!\n\nBest regards,\nCharlene") == "Thanks!\n\nBest regards,\n<PERSON_1>"


def test_an_uncapitalised_personal_sentence_in_cased_text_is_read_whole(step: PiiScrub) -> None:
    text = "my cousin dorota wisniewska moved to via roma 12, 20121 milano, can you write her a note from me and Kasia?"
    out = step.scrub_text(text)
    assert not any(value in out for value in ("dorota", "wisniewska", "roma", "20121", "Kasia")), out
    assert step.scrub_text("Sure. here is the code: x = compute(a, b) and print it").endswith("print it")


def test_a_lower_case_self_introduction_is_a_name_and_small_talk_is_not(step: PiiScrub) -> None:
    assert step.scrub_text("hey its piergiuseppe here lol, can u help") == "hey its <PERSON_1> here lol, can u help"
    for text in ("it's cold here, what should i wear", "its raining here again", "this is me here"):
        assert step.scrub_text(text) == text


def test_a_writer_who_does_not_capitalise_is_read_whole(step: PiiScrub) -> None:
    # the first sentence ends at "ul." and holds no "I"/"me": the writer's casing decides, not the sentence's
    text = "grandpa tadeusz kowalczyk moved to ul. krasickiego 84, 54-180 mielec. write him a card from me and Daniel"
    out = step.scrub_text(text)
    assert not any(value in out for value in ("tadeusz", "kowalczyk", "krasickiego", "54-180", "Daniel")), out


def test_an_address_line_starts_at_its_street_not_at_the_name_before_it(step: PiiScrub) -> None:
    text = "Send the contract to Adam Lizoń at ul. Majowa 501???05-495 Ostrów Wielkopolski???Poland"
    assert step.scrub_text(text, mode="patterns").startswith("Send the contract to Adam Lizoń at <ADDRESS_1>")
    assert step.scrub_text(text) == "Send the contract to <PERSON_1> at <ADDRESS_1>"
    lines = "Gabriella Szabó\nJózsef attila utca 212.\nH-3864 Keresztvára\nHungary"
    assert step.scrub_text(lines, mode="patterns") == "<PERSON_1>\n<ADDRESS_1>"  # the addressee line too


def test_an_address_recurring_in_another_layout_is_found_by_its_numbered_lines(step: PiiScrub) -> None:
    # Czech, so patterns only: the street over lines is found, the same street on one line is not
    lines = "Aleš Toman\nRýmařovská 607\n485 39 Veltrusy\nČeská republika"
    msgs = [
        {"role": "user", "content": f"Uprav mi hlavičku:\n\n{lines}"},
        {"role": "assistant", "content": "Upravená hlavička: " + lines.replace("\n", " · ").replace("607 ·", "607,")},
    ]
    turns = scrub_record(step, msgs, language="cs")
    assert not any(v in turns[1]["content"] for v in ("Rýmařovská", "485 39", "Toman")), turns[1]["content"]


def test_a_one_word_name_takes_the_uncommon_capitalised_word_after_it(step: PiiScrub) -> None:
    # NER and Rampart find only "Giancarlo" here (the address after it pulls the tagger's attention)
    text = "Send the contract to Giancarlo Fogazzaro at Via Viridiana, 2 Appartamento 76???25051 Brignola???Italy"
    assert step.scrub_text(text) == "Send the contract to <PERSON_1> at <ADDRESS_1>"


def test_a_street_takes_the_postcode_and_town_after_it_and_case_does_not_judge_a_casual_writer(step: PiiScrub) -> None:
    out = step.scrub_text("hey its szabolcs here lol. my addy is németmindszenti utca 176., h-8715 ózd, can u send it")
    assert out == "hey its <PERSON_1> here lol. my addy is <ADDRESS_1>, can u send it", out
    out = step.scrub_text("grandma ruggiero polani moved to via ruggero, 721, 16029 in via san nicola, write from me")
    assert not any(v in out for v in ("ruggero", "721", "16029", "nicola")), out


def test_a_postcode_found_in_one_layout_is_found_in_another(step: PiiScrub) -> None:
    msgs = [
        {"role": "user", "content": "Is this address format right? Olivierpad 746, Zoetermeer 2149FU, Netherlands"},
        {"role": "assistant", "content": "Usually it is written:\nOlivierpad 746\n2149FU Zoetermeer\nNetherlands"},
    ]
    turns = scrub_record(step, msgs)
    assert "2149FU" not in turns[0]["content"] and "Olivierpad" not in turns[0]["content"], turns[0]["content"]


def test_greetings_and_sign_offs_of_other_languages_name_people(step: PiiScrub) -> None:
    text = "Corrige mon mail : 'Bonjour Amanda, je t'envoie le RIB pour le loyer. Bises, Cauã'"
    assert step.scrub_text(text, mode="patterns") == (
        "Corrige mon mail : 'Bonjour <PERSON_1>, je t'envoie le RIB pour le loyer. Bises, <PERSON_2>'"
    )
    assert step.scrub_text("Liebe Gitte,\n\ndanke!\n\nLiebe Grüße,\nSybilla", mode="patterns") == (
        "Liebe <PERSON_1>,\n\ndanke!\n\nLiebe Grüße,\n<PERSON_2>"
    )
    for text in ("Hola a todos, gracias", "Thanks, Python rocks"):
        assert step.scrub_text(text, mode="patterns") == text


def test_member_numbers_of_other_languages_and_a_password_in_brackets(step: PiiScrub) -> None:
    out = step.scrub_text("Lidnummer A757-8592-2086\nBetreft: opzegging lidmaatschap 785964455255", mode="patterns")
    assert "A757" not in out and "785964455255" not in out, out
    out = step.scrub_text("Note: leave the password (dgzuilvwS9) out of the ticket.")
    assert out == "Note: leave the password (<SECRET_1>) out of the ticket.", out


def test_one_name_in_a_bullet_list_makes_the_one_word_items_people(step: PiiScrub) -> None:
    text = "invite list:\n- Emily Mellor emily.m@example.org\n- Antony\n- Joanne + kids\nparty at ours"
    out = "invite list:\n- <PERSON_1> <EMAIL_1>\n- <PERSON_2>\n- <PERSON_3> + kids\nparty at ours"
    assert step.scrub_text(text) == out
    steps = "Steps:\n- Install Python\n- Open Terminal\n- Run it"
    assert step.scrub_text(steps) == steps


def test_values_under_personal_keys_are_pii_in_code_and_tool_schemas_are_not(step: PiiScrub) -> None:
    code = '{"full_name": "Sole Barzini", "street": "Contrada Susanna, 4", "zip": "52045", "city": "Garna"}'
    out = step.scrub_text(code, mode="code")
    assert out == '{"full_name": "<PERSON_1>", "street": "<ADDRESS_1>", "zip": "<ADDRESS_2>", "city": "Garna"}'
    schema = '{"name": "get_weather", "parameters": {"city": {"type": "string"}}, "zip": "{zip}", "phone": "string"}'
    assert step.scrub_text(schema, mode="code") == schema


def test_env_secrets_person_names_in_code_and_alarm_codes(step: PiiScrub) -> None:
    env = "my .env\n\n# maintained by Sole Barzini\nPOSTGRES_USER=app\nPOSTGRES_PASSWORD=Q7rreb!z\nDB_PASS=${DB_PASS}\n"
    out = "my .env\n\n# maintained by <PERSON_1>\nPOSTGRES_USER=app\nPOSTGRES_PASSWORD=<SECRET_1>\nDB_PASS=${DB_PASS}\n"
    assert step.scrub_text(env) == out
    code = '{"name": "Sole Barzini", "pwd": "dgzuilvwS9"}, {"name": "get_weather"}, {"name": "Save File"}'
    assert step.scrub_text(code, mode="code") == (
        '{"name": "<PERSON_1>", "pwd": "<SECRET_1>"}, {"name": "get_weather"}, {"name": "Save File"}'
    )
    out = step.scrub_text("Kod alarmu to dgzuilvwS9, potem OK.", mode="patterns")
    assert out == "Kod alarmu to <SECRET_1>, potem OK."
    for text in ("the error code is 404 and code to run: main.py", "The alarm code is off", "api_key = '<your key>'"):
        assert step.scrub_text(text) == text


def test_self_introductions_holders_and_parents_in_other_languages(step: PiiScrub) -> None:
    text = "Je suis Sole Barzini et j'héberge M. Marc Dupont. soy la mamá de Lucía (titular Marta Gil)."
    assert step.scrub_text(text, mode="patterns") == (
        "Je suis <PERSON_1> et j'héberge M. <PERSON_2>. soy la mamá de <PERSON_3> (titular <PERSON_4>)."
    )


def test_a_password_holding_a_bracket_is_kept_whole(step: PiiScrub) -> None:
    assert step.scrub_text("my password: Qr7)dke#39 and nothing else", mode="patterns") == (
        "my password: <SECRET_1> and nothing else"
    )


def test_a_token_is_a_secret_even_where_ner_sees_a_name_or_a_place(step: PiiScrub) -> None:
    text = "export TOKEN='sk-Nq0fiEmPnUIIEcXcO80OdRNawNnA9mo8Kh4qG2o7JGmLk4jm'\npython app.py"
    assert step.scrub_text(text) == "export TOKEN='<SECRET_1>'\npython app.py"
    text = 'requests.get(url, headers={"Authorization": "Bearer AKIAK7861OVT4O88VMIX"})'
    assert "AKIAK7861OVT4O88VMIX" not in step.scrub_text(text)
    assert "<SECRET_1>" in step.scrub_text(text)


def test_form_fields_and_postcode_labels_in_other_languages(step: PiiScrub) -> None:
    text = (
        "Nombre y apellidos: Janus Köhler\nVerhuurder: Cauã da Luz\nCódigo postal: 67606\n"
        "PSČ 473 81, kod pocztowy 83-480"
    )
    assert step.scrub_text(text, mode="patterns") == (
        "Nombre y apellidos: <PERSON_1>\nVerhuurder: <PERSON_2>\nCódigo postal: <ADDRESS_1>\nPSČ <ADDRESS_2>, "
        "kod pocztowy <ADDRESS_3>"
    )
    for text in ("Name: the file you want", "The cp command copies 12345 files; cap 2000 rows"):
        assert step.scrub_text(text, mode="patterns") == text


def test_a_name_grows_over_a_particle_and_surname(step: PiiScrub) -> None:
    assert step.scrub_text("ik ben Cauã da Luz, kamer 3", mode="patterns") == "ik ben <PERSON_1>, kamer 3"


def test_a_street_found_in_one_turn_is_found_lower_cased_in_another_with_its_postcode(step: PiiScrub) -> None:
    msgs = [
        {"role": "user", "content": "the venue (stretto infantino, 37 piano 2, 65022 lagundo), write the invite?"},
        {"role": "assistant", "content": "Join us!\n\n📍 Stretto Infantino, 37 Piano 2, Lagundo\n🕗 Saturday, 8 pm"},
    ]
    turns = [m["content"] for m in scrub_record(step, msgs)]
    for raw in ("infantino", "37 piano", "65022"):
        assert raw not in turns[0].lower() + turns[1].lower(), raw
    assert "write the invite?" in turns[0] and "Saturday, 8 pm" in turns[1]


def test_passwords_without_a_cue_in_their_sentence_home_dirs_and_prefixed_keys(step: PiiScrub) -> None:
    msgs = [
        {"role": "user", "content": "ich hab damals ROLN0U5eYWy genommen, kann das sein?"},
        {"role": "assistant", "content": 'Wenn "ROLN0U5eYWy" nicht funktioniert, nutze "Passwort vergessen".'},
    ]
    turns = [m["content"] for m in scrub_record(step, msgs, "de")]
    assert "ROLN0U5eYWy" not in turns[0] + turns[1]
    assert step.scrub_text("network is HomeNet and the key is xOG7vzQcnGX") == (
        "network is HomeNet and the key is <SECRET_1>"
    )
    yaml = 'env:\n  SMTP_PASS: CgCx74$oz*hi0G\n  FROM_NAME: "Judith Taylor"\n  volume: /home/judith/mail:/data\n'
    out = step.scrub_text(yaml, mode="code")
    for raw in ("CgCx74", "Judith", "judith"):
        assert raw not in out, raw
    for text in ("the key is to practise with v2.3.1 and getUser2Name", "PASSENGERS=1200", "cd /home/ubuntu/app"):
        assert step.scrub_text(text, mode="code" if "=" in text or "cd" in text else "ner") == text


def test_account_users_sql_rows_and_table_columns(step: PiiScrub) -> None:
    compose = "services:\n  db:\n    environment:\n      POSTGRES_USER: róża\n      POSTGRES_DB: shop\n"
    assert step.scrub_text(compose, mode="code") == compose.replace("róża", "<PERSON_1>")
    for text in ("POSTGRES_USER: postgres\n", "DB_USER=${DB_USER}\n", "user_agent: Mozilla/5.0\n"):
        assert step.scrub_text(text, mode="code") == text
    url = step.scrub_text("psql postgres://mkowalski:Xq7rT9pw@db.internal:5432/shop", mode="code")
    assert "mkowalski" not in url and "Xq7rT9pw" not in url
    sql = (
        "INSERT INTO customers (full_name, email, city)\n"
        "VALUES ('błażej gałaj', 'bg@example.pl', 'Kraków'), ('Ana O''Neil', 'ana@example.ie', 'Cork');"
    )
    out = step.scrub_text(sql, mode="code")
    assert "błażej" not in out and "O''Neil" not in out and "bg@example.pl" not in out
    assert "INSERT INTO customers (full_name, email, city)" in out
    table = (
        "| Name | tax id | Phone | Token |\n|---|---|---|---|\n"
        "| Johnnie Hansen | 74-9783379 | 5839 9207 | the |\n| Bo Li | — | iPhone 15 | ing |\n"
    )
    out = step.scrub_text(table)
    for raw in ("Johnnie", "9783379", "5839", "Bo Li"):
        assert raw not in out, raw
    for kept in ("iPhone 15", "| the |", "| ing |", "| — |"):
        assert kept in out, kept


def test_names_spread_grow_and_are_announced_in_more_ways(step: PiiScrub) -> None:
    msgs = [
        {"role": "user", "content": "devo mandare un bonifico a mio cugino Javi Amigó, intestato a lui."},
        {"role": "assistant", "content": "Sì: basta che Javi sia intestatario. Scrivi 'Rimborso – Javi Amigó'."},
        {"role": "user", "content": "cheers, javi"},
    ]
    turns = [m["content"] for m in scrub_record(step, msgs, "it")]
    for raw in ("Javi", "javi", "Amigó"):
        assert all(raw not in t for t in turns), raw
    for text, raw in (
        ("hoi!Matthias de Bont hier. kun je een mailtje schrijven?", "Bont"),
        ("bonjour, elle s'appelle Agapito Prado et elle est malade", "Agapito"),
        ("Várunk szeretettel,\nMáté Kerekes", "Máté"),
        ("Groetjes,\nGerhild\nLuis-Freudenberger-Gasse 120, Marktheidenfeld", "Gerhild"),
        ("Hi all, Anna here, quick question about the rota", "Anna"),
    ):
        assert raw not in step.scrub_text(text), text
    assert step.scrub_text("Click here. Start here: then Sign here.") == "Click here. Start here: then Sign here."
    german = [{"role": "user", "content": "Das heißt Arbeit für alle, sagt sie."}]
    assert scrub_record(step, german, "de")[0]["content"] == german[0]["content"]


def test_more_numbers_and_secrets_people_write(step: PiiScrub) -> None:
    for text, raw in (
        ("mon numero c'est le 4107 3995 si besoin", "4107"),
        ("he gave me 5839 9207 and said text him", "5839"),
        ("reach me on uh 001-755-515-7994x7847, thanks", "7994"),
        ('{"document": {"type": "tax id", "number": "74-9783379"}}', "9783379"),
        ("network is Rasmussen5G and the key is mzMBEHfqpj9a", "mzMBEHfqpj9a"),
        ("If the password `A2QM%ec3TOcRq` has a % in it, quote it.", "A2QM"),
        ("i live at Fürdőfai tér 18. (H-4661), near the lake", "4661"),
    ):
        assert raw not in step.scrub_text(text), text
    assert step.scrub_text("we sold 5839 9207 units, call me later") == "we sold 5839 9207 units, call me later"
    msgs = [
        {"role": "user", "content": "i log in with admin and R9Kh5sp*ECm8@E, never changed it"},
        {"role": "user", "content": "ok changed it. new one is the old one with a 2 on the end: R9Kh5sp*ECm8@E2 haha"},
    ]
    turns = [m["content"] for m in scrub_record(step, msgs)]
    assert all("R9Kh5sp" not in t and "@E2" not in t for t in turns)


def test_json_address_lines_postcode_lines_with_a_country_and_field_names(step: PiiScrub) -> None:
    """From held-out set 10: a `line1` key is a street, a postcode line may end in ", Country", a
    closing "thanks" is no address line, and a quoted key Rampart calls a person stays a key."""
    payload = (
        '{"beneficiary": {"name": "Signe Holm", "iban": "DK5000400440116243"},\n'
        ' "address": {"line1": "Tølløsevej 38", "postal_code": "4433"}, "line2": "Hello there"}'
    )
    signature = "Clean up my signature:\nJana Dvořáková\nV Poli 469\n505 89 Hradec Králové, Czechia"
    hungarian = "Signature:\nKiss Eszter\nArany jános utca 136.\nH-9847 Nagykanizsa, Hungary\nthanks"
    out = [m["content"] for m in scrub_record(step, [{"role": "user", "content": t} for t in (payload, signature)])]
    for value in ("Signe Holm", "DK5000400440116243", "Tølløsevej", "4433", "Poli", "505 89", "Czechia"):
        assert value not in "".join(out)
    assert '"iban": "<IBAN_1>"' in out[0] and '"line2": "Hello there"' in out[0]
    scrubbed = scrub_record(step, [{"role": "user", "content": hungarian}])[0]["content"]
    assert "Arany" not in scrubbed and "H-9847" not in scrubbed and "Hungary" not in scrubbed
    assert scrubbed.endswith("\nthanks")


def test_csv_columns_kinship_recipients_and_signature_labels(step: PiiScrub) -> None:
    """From held-out set 11: a pasted CSV's personal columns key their cells, a relative named after
    the word for them ("a tesóm María"), a payee label ("Odbiorca:"), "X vagyok", and a signature's
    "M:" label make names and phones; a date is no street and a one-letter word is no place."""
    csv = (
        "clean this up\n\nname,email,phone,city\nFernanda Souza,fs@example.com.br,0475183011,Bydgoszcz\n"
        'Roksana Staciwa,,Bydgoszcz\n"Hilde Bachmann" ,  ,\n\nthanks'
    )
    out = step.scrub_text(csv)
    for value in ("Fernanda", "Souza", "0475183011", "Roksana", "Staciwa", "Hilde", "Bachmann"):
        assert value not in out
    assert out.startswith("clean this up\n\nname,email,phone,city\n") and out.endswith("\n\nthanks")
    texts = {
        "köszi! a tesóm María intézné, ő is a szegedi kormányablakba menne": ["María"],
        "Przelew – pl. Korfantego 18, Świdnik\n\nOdbiorca: Einer Friis\nRachunek: w załączniku": [
            "Korfantego",
            "Einer",
        ],
        "szia! Kovács Tibor vagyok, segítenél?": ["Kovács", "Tibor"],
        "My sister Anna and meine Kollegin Jana, mi hermano Luis, ma sœur Odile": ["Anna", "Jana", "Luis", "Odile"],
        "Best regards,\nMiluše Ježek\nProject Coordinator\nM: 8218 1508": ["Miluše", "8218 1508"],
        "📞 7648 1845 · ✉️ nome@example.it": ["7648 1845"],
    }
    for text, values in texts.items():
        out = step.scrub_text(text)
        assert not [v for v in values if v in out], out
    assert "ő is" in step.scrub_text("köszi! a tesóm María intézné, ő is a szegedi kormányablakba menne")
    date = "Date: Mon, 3 Mar 2025 at 09:14\nSubject: Re: site visit"
    assert step.scrub_text(date) == date
    example = "Hozz papírokat, pl. a Budapest 12 irodában is lehet."  # Hungarian "pl." is "e.g."
    assert "<ADDRESS" not in step.scrub_text(example)


def test_passwords_without_a_cue_and_found_again_elsewhere(step: PiiScrub) -> None:
    """From held-out set 11: a Wi-Fi text is about a key, a token of all four kinds is a secret in
    any prose, a curl `-u user:password` pair's password is found alone later (with a digit added),
    a config user name that is a word is found again in inline code, and a phone's local part too."""
    wifi = "i changed it yesterday to vpcuMizFNF16bU on the router page and the laptop cant connect"
    assert "vpcuMizFNF16bU" not in step.scrub_text(wifi)
    assert "*gJdw#n7X" not in step.scrub_text("ok so i set it to *gJdw#n7X yesterday, works now")
    kept = "Run pip install torch==2.3.1 and see PROJ-4821 or a2b+c3 at 09:14."
    assert step.scrub_text(kept) == kept
    turns = [
        {"role": "user", "content": 'curl -X POST https://api.example.io/v2 \\\n  -u "ana@example.io:FCbvbv5509"'},
        {"role": "user", "content": "ok, changing it. new one will be something like FCbvbv55092 lol"},
        {"role": "user", "content": "environment:\n  POSTGRES_USER: job\n  POSTGRES_DB: shop"},
        {"role": "assistant", "content": "The user `job` is set on first init, which is why the job failed."},
        {"role": "user", "content": "my number is +39 347 7648 1845"},
        {"role": "assistant", "content": "**Curriculum**\nCell 7648 1845 (mobile)"},
    ]
    out = [m["content"] for m in scrub_record(step, turns)]
    assert "FCbvbv5509" not in "".join(out)
    assert "`job`" not in out[3] and "the job failed" in out[3]
    assert "7648" not in out[5]


@pytest.mark.parametrize(
    "text",
    [
        "@ClaireMcD22 I honestly don't know, ask @JennyVeronica92 #GoTSeason5 premieres Sunday",
        "The greatest common factor of the given numbers.\n66 and 44",
        "The area (in prime numbers) is approximately 314.0185 square units.",
        "Your package has shipped. The tracking number is 123456789.",
        "It builds with C++17/Python3.11 and Node.js, see the Q3/FY2024 plan.",
    ],
)
def test_handles_arithmetic_decimals_and_tracking_numbers_are_kept(step: PiiScrub, text: str) -> None:
    """What the four-kinds secret rule and the phone and street patterns must leave: handles and
    hashtags (the pii_bench WNUT-17 run), two numbers and a connector, a decimal, a tracking number."""
    assert step.scrub_text(text) == text


def test_keys_urls_chat_logs_and_keys_in_other_languages(step: PiiScrub) -> None:
    """From blind set 12: "full_name" is its own key (not "full_" and "name"), a URL password may hold
    an "@", "ADMIN_EMAIL=" stays a key, a pasted chat log's speakers and a "X's corporate card" are
    people, "la clé c'est X" and "admin / X" are secrets, a house-number range ends a street line."""
    code = (
        'my API returns 422\n\n```json\n{\n  "customer": {\n    "full_name": "Naomi Sam",\n'
        '    "email": "naomi@example.nl"\n  }\n}\n```'
    )
    env = "```\nDATABASE_URL=postgres://thomas:x@uiUYm7YMY!2@db.internal:5432/shop\nADMIN_EMAIL=t@example.de\n```"
    turns = [
        {"role": "user", "content": code},
        {"role": "user", "content": env},
        {"role": "assistant", "content": "Make sure the role `thomas` exists."},
        {"role": "user", "content": "my details:\nAnna Kuhn\nKochring 80-29\n49961 Wolfsburg"},
        {"role": "user", "content": "[10:42] Ruth Brandt: use África Gómez's corporate card\n[10:44] África Gómez: ok"},
        {"role": "assistant", "content": "I'll book it using África's corporate card."},
        {"role": "user", "content": "le wifi s'appelle Livebox-1234 et la clé c'est xkGwnDTK2."},
        {"role": "user", "content": "the shared vault entry for the office printer is admin / FCbvbv5509, ok"},
    ]
    out = [m["content"] for m in scrub_record(step, turns)]
    gone = ("Naomi", "thomas", "uiUYm7YMY", "Kochring", "49961", "Ruth", "África", "Gómez", "xkGwnDTK2", "FCbvbv5509")
    for value in gone:
        assert value not in "".join(out), value
    assert "ADMIN_EMAIL=<EMAIL_" in out[1] and out[7].endswith(", ok")
    compose = "environment:\n  MYSQL_ROOT_PASSWORD: $PIAD@dM2JkG\n  DB_PASS: ${DB_PASS}\n  PASS2: $DB_PASS\n"
    assert step.scrub_text(compose, mode="code") == (
        "environment:\n  MYSQL_ROOT_PASSWORD: <SECRET_1>\n  DB_PASS: ${DB_PASS}\n  PASS2: $DB_PASS\n"
    )
    assert looks_like_password("xkGwnDTK2")
    assert not any(map(looks_like_password, ("PlayStation5", "McDonalds2", "iPhone15")))


def test_config_lines_git_names_logs_literals_ids_and_transfers(step: PiiScrub) -> None:
    """From blind set 13 (code, configs, logs): unquoted config values under person keys
    (gitconfig "name = X", a log's holder="X", HCL Contact = "X"), git's user.name, a string literal
    of all four character kinds, a lone first name in a CSV column of people, ids after filler words
    in other languages, a transfer's payee, a random-case password with one inner digit, a home
    directory that starts with an accent; a workflow's "name: Build and Test" and a format stay."""
    turns = [
        '```hcl\nvariable "db_password" {\n  default = 4cLT3gjbM@vU\n}\ntags = {\n  Contact = "Gunar Bohnbach"\n}\n```',
        'Change it to `default = "4cLT3gjbM@vU"`',
        '```\n[user]\n\tname = Alfred Fischer\n```\nfix with `git config user.name "Alfred Fischer"`',
        '```\n2024-03-12T10:23:47Z WARN [refund] iban=DE89370400440532013000 holder="Nicole Boulay" status=OK\n```',
        "```csv\nname,email,phone,city\nAna Lee,a@example.io,,Porto\nLeandro ,b@example.io,,Porto\n```",
        "oi, o CPF que usei foi EF9752358. Smlouva je na mě, číslo zákaznického účtu V55384953.",
        "ciao, devo fare un bonifico a Einer Friis per l'affitto.",
        "ik heb het wachtwoord veranderd, ik heb het ingesteld op biAUN0zsj via de app",
        "30 2 * * * /home/ísis/bin/backup.sh",
    ]
    out = "\n".join(m["content"] for m in scrub_record(step, [{"role": "user", "content": t} for t in turns]))
    gone = ("4cLT3gjbM", "Gunar", "Bohnbach", "Alfred", "Fischer", "Nicole", "Boulay", "Leandro", "EF9752358")
    assert not [v for v in (*gone, "V55384953", "Einer Friis", "biAUN0zsj", "ísis") if v in out], out
    workflow = (
        '```yaml\nname: Build and Test\nsteps:\n  - name: Main Menu\nformat: "%Y-%m-%dT%H:%M:%S"\nv: "v1.2.3-RC4"\n```'
    )
    assert scrub_record(step, [{"role": "user", "content": workflow}])[0]["content"] == workflow


def test_sql_rows_with_brackets_log_fields_owners_and_terraform_defaults(step: PiiScrub) -> None:
    """From blind set 13, second look: an SQL row whose phone holds brackets, a log line's key=value
    fields (an IBAN, a holder with particles, an address), an owner label that is a known first
    name, and a Terraform secret variable's unquoted default; a team owner stays."""
    sql = (
        "```sql\nINSERT INTO customers (id, full_name, email, phone)\nVALUES\n"
        "  (101, 'Alice Gautier', 'ag@example.fr', '(26) 815-672'),\n  (102, 'Ana Lee', NULL, NULL);\n```"
    )
    log = (
        '```\n2024-03-12T10:23:47Z WARN [refund] iban=CZ3157586677119552342548 holder="Victor van de Elzas"\n'
        '2024-03-12T10:22:01Z DEBUG billing_address="Stretto Chigi, 43, 23865 Sant\'Angelo Le Fratte" status=OK\n```'
    )
    k8s = "```yaml\nmetadata:\n  labels:\n    owner: kathleen\n    team-owner: sre\n```"
    hcl = '```hcl\nvariable "db_password" {\n  type    = string\n  default = 3dAAoIAlRv1\n}\n```'
    turns = [{"role": "user", "content": t} for t in (sql, log, k8s, hcl)]
    out = "\n".join(m["content"] for m in scrub_record(step, turns))
    gone = ("Gautier", "815-672", "CZ3157586677119552342548", "Victor", "Elzas", "Chigi", "23865", "kathleen", "3dAAo")
    assert not [v for v in gone if v in out], out
    assert "team-owner: sre" in out


def test_czech_sign_offs_streets_customer_refs_and_log_times(step: PiiScrub) -> None:
    """From blind set 14: "Díky,\nRyan" closes a Czech message, "Hostivařské Nám. 3" is a street
    with its abbreviation capitalised, a log's customer_ref is an id, and a log's time and level
    ("09:14:23Z ERROR 402") are no street."""
    turns = [
        "Ahoj, kolega se jmenuje Ryan Cole.",
        "Ahoj,\n\nposílám přístup.\n\nDíky,\nRyan\n\n(Tip: heslo pošli jinak.)",
        "Den holdes hos os på Hostivařské Nám. 3. Tilmelding senest fredag.",
        "2024-03-11T09:14:23Z ERROR 402 card_declined customer_ref=52-4144200\n\nwhy declined?",
    ]
    out = [m["content"] for m in scrub_record(step, [{"role": "user", "content": t} for t in turns])]
    assert "Ryan" not in out[1] and "Hostivařské" not in out[2] and "52-4144200" not in out[3]
    assert out[3].startswith("2024-03-11T09:14:23Z ERROR 402 card_declined customer_ref=<ID_")


def test_passport_words_joined_sign_offs_and_ids_in_inline_code(step: PiiScrub) -> None:
    """From blind set 15: passports and identity cards named in French and Polish ("c'est le X",
    "dowodu osobistego? mój to X"), and "Grazie e cordiali saluti,\nValerij"."""
    turns = [
        "Mon numéro de passeport c'est le K67851369.",
        "a gdzie wpisać numer dowodu osobistego? mój to VT7277114",
        "Gentile segreteria,\n\nvi scrivo per la visita.\n\nGrazie e cordiali saluti,\nValerij",
    ]
    out = "\n".join(m["content"] for m in scrub_record(step, [{"role": "user", "content": t} for t in turns]))
    assert not [v for v in ("K67851369", "VT7277114", "Valerij") if v in out], out
    kept = "je ne sais pas 2024, et mon passeport expire bientôt"
    assert step.scrub_text(kept, mode="patterns") == kept


def test_login_log_fields_whom_to_ask_for_genitive_names_and_signed_names(step: PiiScrub) -> None:
    """From set 15's rerun: in a login log an id after "account number=" is an id, not a password
    with its key (so it is found again in inline code), and "ip=" stays an IP; the name to ask for
    ("vraag naar Job", "naar Jurre moet vragen", "ask for Evi"), a genitive without apostrophe
    ("Dinas number") and the name a letter is signed with are names; "ask for Help" is no name."""
    log = (
        "2024-03-11T08:14:02Z INFO  auth: login attempt user=anna.k@example.org ip=10.2.4.17\n"
        '2024-03-11T08:14:09Z INFO  kyc: lookup customer_name="Lucia Bianchi" account number=478030234588'
    )
    turns = [
        ("user", log),
        ("assistant", "The KYC service looked up Lucia by account number `478030234588`."),
        ("user", "zet er bij dat je naar Jurre moet vragen, of vraag naar Job. Or ask for Evi."),
        ("user", "a letter from Dina Schulz please. Dinas number is 0151 2345678, and sign my part as juliana"),
        ("user", "you should ask for Help from Support"),
    ]
    out = [m["content"] for m in scrub_record(step, [{"role": r, "content": t} for r, t in turns])]
    text = "\n".join(out)
    assert not [v for v in ("478030234588", "Jurre", "Job", "Evi", "Dina", "juliana") if v in text], text
    assert "ip=<IP_" in out[0] and out[4] == "you should ask for Help from Support"


def test_a_family_by_its_surname_a_name_inside_an_ssid_and_greetings_and_sign_offs(step: PiiScrub) -> None:
    """From blind set 16: "the Karalus house" names a family and its Wi-Fi "Karalus_home" names it
    again; a lower-case writer's "ordren står på Uwe Beer" has a surname that is a word; "Hej Uwe"
    is Uwe (not a name "Hej Uwe"), and "Love," before the names is no name. The White House stays."""
    turns = [
        ("user", "can you make a card for the fridge? network is Karalus_home and the key is Xk9!pw22qq"),
        ("assistant", "🏠 Welcome to the Karalus house! 🏠\n\nWi-Fi: Karalus_home\n\nLove, Lidia & Olaf ❤️"),
        ("user", "hej, min ordre er ikke kommet. ordren står på Uwe Beer"),
        ("assistant", "Hej Uwe, det er jeg ked af at høre."),
        ("user", "We toured the White House and the Opera House."),
    ]
    out = [m["content"] for m in scrub_record(step, [{"role": r, "content": t} for r, t in turns])]
    assert not [v for v in ("Karalus", "Lidia", "Olaf", "Uwe", "Beer") if v in "\n".join(out)], out
    assert "Love, <PERSON_" in out[1] and out[3].startswith("Hej <PERSON_")
    assert out[4] == "We toured the White House and the Opera House."


def test_prose_in_code_strings_contact_lists_and_the_everyday_shapes_of_set_17(step: PiiScrub) -> None:
    """From blind set 17: a message in a shell string and a heredoc is prose (names, streets, the
    "-- Romolo" signature); a JSON "member" and a YAML "couple: Flora & Ida" are people; a chat log
    "[Sat 09:12] Ida:" speaker; Hungarian "TAJ-szám", Danish "cpr med? det er X"; a Danish 8-digit
    phone after "call me"; "Kind regards,\nJob de Jong"; a contact list's name column and a row
    with an unquoted comma; a first name before a found surname. Code keeps its words."""
    script = (
        '```bash\nTO="romolo@x.it"\nBODY="Hi Melania, keys are in the lockbox at Vicolo Agnolo, 715, code 4471. '
        'call me if stuck. -- Romolo"\necho "$BODY" | mail -s "Move-in info" "$TO"\n```'
    )
    heredoc = "```bash\nBODY=$(cat <<EOF\nHi Melania,\n\nKeys are at Vicolo Agnolo, 715.\n\n-- Romolo\nEOF\n)\n```"
    turns = [
        script,
        heredoc,
        's.post("https://gym.example/book", json={"member": "Isabella Thorsen"})',
        'smtp:\n  host: smtp.gmail.com\ncouple: "Flora & Ida"',
        "[Sat 09:12] Antal: who has the netflix login again",
        "Kovács Anna vagyok, TAJ-szám 707772827114. És a lányom? skal hendes cpr med? det er 184682164128",
        "cant make it, call me 64873488 if anything",
        "Please fix it.\n\nKind regards,\nJob de Jong",
        "name,email,street,postcode,city\nSusanna Metz,,Estrada Gomes, 693,18006478,Viana",
        "Carlos García Núñez autoriza el cargo de la socia Rembrandt García.",
    ]
    out = [m["content"] for m in scrub_record(step, [{"role": "user", "content": t} for t in turns])]
    gone = (
        "Melania", "Agnolo", "Romolo", "Thorsen", "Flora", "Ida", "Antal", "707772827114", "184682164128",
        "64873488", "Job", "Jong", "Susanna", "Metz", "18006478", "Rembrandt",
    )  # fmt: skip
    assert not [v for v in gone if v in "\n".join(out)], out
    assert 'echo "$BODY" | mail -s "Move-in info" "$TO"' in out[0] and "code 4471" in out[0]


def test_driving_licences_and_tax_ids_named_in_other_languages(step: PiiScrub) -> None:
    """From blind set 18: an Italian "patente (n.) X", a Hungarian "adóazonosító jelem: X" found again
    where the same value stood after "az enyém", a German "Führerschein", a French "permis n°"."""
    turns = [
        "io sono Marco Rossi, patente V55384953. Conducente A: Marco Rossi, patente n. V55384953.",
        "az adóazonosító jelemet kérik. az enyém 886868052914.",
        "Tisztelt HR! Az új munkaszerződéshez szükséges adóazonosító jelem: 886868052914.",
        "mein Führerschein C44596514 ist weg, permis de conduire n° EJ0126773",
    ]
    out = "\n".join(m["content"] for m in scrub_record(step, [{"role": "user", "content": t} for t in turns]))
    assert not [v for v in ("V55384953", "886868052914", "C44596514", "EJ0126773") if v in out], out
    assert step.scrub_text("la patente è scaduta nel 2024") == "la patente è scaduta nel 2024"


def test_first_names_outside_english_columns_lower_case_full_names_and_short_sign_offs(step: PiiScrub) -> None:
    """From blind set 18: a known first name capitalised inside a Czech, Dutch or Italian sentence (or
    opening one, from a writer who does not capitalise), a name in a table column beside found
    names, a lower-case full name from a casual writer, "Vh X" closing a Danish note, a phone after
    "meu whats é", and a Brazilian postcode after a found street."""
    czech = "díky! a mám tam dát i fotku? Zdeňka říkala že v česku se to dává"
    dutch = "kun je me helpen? juf Henrike wil dat we ons opgeven maar Femke is die dag ziek."
    italian = "l'altro guidatore è Rosalinda Pizzuti, io sono Marco Rossi."
    table = (
        "split pls\n\n| who | paid |\n|---|---|\n| Ottokar | 96.40 |\n| Jessica | 54.00 |\n| Paulina | 31.20 |\n\n"
        "Paulina said to send it"
    )
    lower = "i have a column from our member export, all lower case, how do i fix it?\n\nB2: kalina wróbel"
    danish = '"Depositum overføres i dag. Vh Ejnar Rasmussen"'
    phone = "já mandei email e nada. meu whats é 5839 9207 e eles nem responderam"
    street = "Moro na Rua das Acácias, 12, 64194-037 Teresina."
    cases = [
        (czech, "cs", ["Zdeňka"]),
        (dutch, "nl", ["Henrike", "Femke"]),
        (italian, "it", ["Rosalinda Pizzuti", "Marco Rossi"]),
        (table, None, ["Ottokar", "Jessica", "Paulina"]),
        (lower, None, ["kalina", "wróbel"]),
        (danish, "da", ["Ejnar", "Rasmussen"]),
        (phone, "pt", ["5839 9207"]),
        (street, "pt", ["Acácias", "64194-037"]),
    ]
    for text, language, planted in cases:
        out = scrub_record(step, [{"role": "user", "content": text}], language)[0]["content"]
        assert not [v for v in planted if v in out], out
    # capitals that are no names stay: a German noun that is a name elsewhere, "Ella" opening a Spanish
    # sentence, a place
    for text, language in [
        ("Die Lage ist gut, und in zwei Tage sind wir da.", "de"),
        ("Ella dijo que vendría mañana a la oficina.", "es"),
        ("jasmine rice or basmati? i always cook jasmine rice", None),
    ]:
        out = scrub_record(step, [{"role": "user", "content": text}], language)[0]["content"]
        assert "<PERSON" not in out, out


def test_signatures_policy_numbers_log_passwords_csv_cards_and_quoted_streets(step: PiiScrub) -> None:
    """From blind set 19: a first name alone on a message's last line, a Dutch "polisnummer", a
    password under a "temp_pw" log key, a card in a CSV field after a number, a postcode after a
    quoted street, "Mange hilsner, X", a surname named as one ("mit efternavn X"), "fyi X said", a
    name under a "name" key, and a surname with "ß" found again inside a lower-case query."""
    turns = [
        "If anything goes wrong, ask the neighbours.\n\nEnjoy your stay!\nFranciszek",
        "Ik wil bezwaar maken, polisnummer KX4471902, en mijn Bestellnummer 55123 bleef.",
        "```\n2024-05-02T09:14:12Z DEBUG payload temp_pw=Hbqkwt7731\nDEBUG retry temp_pw=$qR5TzwkPe\n```",
        "```\nid,name,phone,card\n1,Ana Lee,+45 12 34 56 78,5018-2001-4337\n```",
        "If both are 'Rua das Acácias, 12', 64194037 Teresina, delete one",
        "Hvis der er noget, ring til mig. Mange hilsner, Dorthe",
        "skal jeg skrive mit efternavn Oxholm også?",
        "thx, reprinted. fyi Ingeborg said the same thing happened last week",
        '```python\nrows = [{"name": "Naomi Sam", "city": "Leiden"}]\n```',
        "| id | name |\n|---|---|\n| 88 | Jörg Spieß |\n\nWHERE lower(c.name) = 'jörg spieß';",
    ]
    out = "\n".join(m["content"] for m in scrub_record(step, [{"role": "user", "content": t} for t in turns]))
    planted = ["Franciszek", "KX4471902", "Hbqkwt7731", "5018-2001-4337", "Acácias", "64194037", "Dorthe"]
    planted += ["Oxholm", "Ingeborg", "Naomi Sam", "spieß", "Spieß", "qR5TzwkPe"]
    assert not [v for v in planted if v in out], out
    assert "Bestellnummer 55123" in out  # an order number stays
    for text in ["```\nDB_PASSWORD=${DB_PASS}\npw = $PGPASSWORD\n```", "Cheers!\nBest"]:
        assert step.scrub_text(text, mode="code" if "```" in text else "ner") == text


def test_discord_speakers_checklists_vcards_and_payment_apps(step: PiiScrub) -> None:
    """From blind set 20: a Discord export's "Name — Today at 8:50 PM" speaker lines, a checklist's
    "- [ ] Name: ...", a vCard's name, phone and address components, a phone after "Bizum al"; from
    set 22, an invite's attendee ("ATTENDEE;CN=X:mailto:...")."""
    turns = [
        "BEGIN:VEVENT\nATTENDEE;CN=Florisvaldo Peçanha:mailto:f@example.com\nEND:VEVENT",
        "Ottilie — Today at 8:41 PM\nparty at mine\nZbyněk — Today at 8:50 PM\nill bring chips",
        "**Who brings what**\n- [ ] Zbyněk: chips\n- [ ] Ottilie: hosting\n- [ ] Radomír: ?",
        "```\nBEGIN:VCARD\nFN:Ottilie Brandl\nTEL;TYPE=CELL:+33 6 12 34 56 78\n"
        "ADR;TYPE=HOME:;;8, chemin Guy Mendès;Lyon;;69003;France\nEND:VCARD\n```",
        "[18/04/2024, 22:12] Ana: 24€ en total, Bizum al 800 5834",
    ]
    out = "\n".join(m["content"] for m in scrub_record(step, [{"role": "user", "content": t} for t in turns]))
    planted = ["Ottilie", "Zbyněk", "Radomír", "Brandl", "+33 6 12 34 56 78", "chemin Guy", "69003", "800 5834"]
    planted += ["Florisvaldo", "Peçanha"]
    assert not [v for v in planted if v in out], out
    assert "Bizum" in out and "BEGIN:VCARD" in out


@pytest.mark.parametrize(
    "text",
    [
        "Die Beiträge werden von meinem Konto CZ8153864079558244489942 abgebucht.",  # presidio's regex runs on
        "iban DE89-3704-0044-0532-0130-00.",
        "send it to gb82west12345698765432 please",
    ],
)
def test_ibans_are_taken_at_their_country_length(step: PiiScrub, text: str) -> None:
    """An IBAN followed by a word, dashed or typed in lower case is found whole and validated."""
    out = step.scrub_text(text)
    assert "<IBAN_1>" in out and not any(ch.isdigit() for ch in out.replace("<IBAN_1>", "")), out


def test_name_keys_in_other_languages_and_czech_business_ids(step: PiiScrub) -> None:
    """From blind set 21: a YAML roster's Dutch "naam:" key, an invoice export's "ICO" column."""
    turns = [
        "```yaml\nvrijwilligers:\n  - naam: Hortense Salmon\n    email: k@x.net\n```",
        "```\ncislo;datum;odberatel;ICO;castka\n2024001;05.01.2024;Jan Novák;VT7277114;12 400,00\n```",
    ]
    out = "\n".join(m["content"] for m in scrub_record(step, [{"role": "user", "content": t} for t in turns]))
    assert not [v for v in ("Hortense Salmon", "VT7277114") if v in out], out
    assert "2024001;05.01.2024" in out  # the invoice number and date stay


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("my library card number 29837465 expired", "29837465"),
        ("polis nummer KX4471902, graag snel", "KX4471902"),
        ("numéro de sociétaire 12345678", "12345678"),
        ("the participant number is 44556677", "44556677"),
    ],
)
def test_a_number_named_for_a_person_thing_is_an_id(step: PiiScrub, text: str, value: str) -> None:
    """Any "<thing> number" with 6+ digits is an id, in the languages of chat exports."""
    assert value not in step.scrub_text(text)


@pytest.mark.parametrize(
    "text",
    [
        "your order number 12345678 ships today",
        "invoice number 20240001 is attached",
        "a prime number 104729 and the port number 543210",
        "line number 123456 of the build number 20240101",
    ],
)
def test_numbers_of_orders_invoices_and_code_stay(step: PiiScrub, text: str) -> None:
    """Orders, invoices, parcels, maths and code: their numbers are no one's id."""
    assert step.scrub_text(text) == text
    german = "Meine Bestellnummer ist 55123456 und die Sendungsnummer 00340434161234567890."
    assert scrub_record(step, [{"role": "user", "content": german}], "de")[0]["content"] == german


def test_passwords_of_random_letters_and_product_words_beside_them(step: PiiScrub) -> None:
    """A mixed-case token whose letters are no words is a chosen password in a password sentence
    (tune misses "login with tCHJvcrzj9811", "changed it to XgrpYDi9"); "PlayStation5" is no password."""
    text = "i told him to login with qWRtbnzk4417 but it says wrong password. the wifi password is now HtqzYDu8"
    out = step.scrub_text(text)
    assert "qWRtbnzk4417" not in out and "HtqzYDu8" not in out, out
    kept = "the password for the PlayStation5 account is in the PowerShell7 notes"
    assert "PlayStation5" in step.scrub_text(kept) and "PowerShell7" in step.scrub_text(kept)


def test_yaml_block_addresses_and_a_signature_with_a_note(step: PiiScrub) -> None:
    """From blind set 22: a YAML "address: |" block in code, a sign-off's name followed by a note in
    brackets ("Groetjes,\nJesper (je buren op nummer 14)"); a block under no personal key stays."""
    turns = [
        "```yaml\nsender:\n  address: |\n    Plánická 168\n    389 47 Plasy\n    Czech Republic\n```",
        "Je kunt me bellen of appen.\n\nGroetjes,\nWillemijn (je buren op nummer 14)",
    ]
    out = "\n".join(m["content"] for m in scrub_record(step, [{"role": "user", "content": t} for t in turns]))
    assert not [v for v in ("Plánická 168", "389 47", "Willemijn") if v in out], out
    script = "```yaml\nscript: |\n  echo hello\n  make test\n```"
    assert step.scrub_text(script, mode="code") == script


def test_ids_in_inline_code_and_json_siblings_and_inflected_password_words(step: PiiScrub) -> None:
    """From blind set 23: an id in inline code named by the prose before it, a JSON "doc_no" beside
    "doc_type": "passport no.", a password in a Polish turn that names "hasła" only inflected, a
    lower-case full name under a "name" key, "X jestem" ("I am X")."""
    turns = [
        "you have her passport no. `KT7712093` and her NHS number `485 777 3459` in the script.",
        '```python\napplicant = {"doc_type": "passport no.", "doc_no": "RB4400172"}\n```',
        "ok odzyskałam!! stare było 7QtzVpmR xd. używałyśmy tego samego hasła",
    ]
    out = "\n".join(m["content"] for m in scrub_record(step, [{"role": "user", "content": t} for t in turns]))
    assert not [v for v in ("KT7712093", "485 777 3459", "RB4400172", "7QtzVpmR") if v in out], out
    code = "run `pytest -k test_12345678` and see line `1234567`"
    assert step.scrub_text(code) == code
    more = ['```python\napplicant = {"name": "kalina wróbel"}\n```', "dzięki, powiem jej. Zdeňka jestem btw haha"]
    out = "\n".join(m["content"] for m in scrub_record(step, [{"role": "user", "content": t} for t in more]))
    assert not [v for v in ("kalina wróbel", "Zdeňka") if v in out], out


def test_auth_pairs_in_code_hungarian_phone_words_after_and_an_id_a_sentence_later(step: PiiScrub) -> None:
    """From blind set 24: requests' auth=("user", "pw") in code (and the password found again in
    prose), "a 616 1670 számon hívjanak" (the phone word after), "mit pasnummer med, er det
    normalt? det er X" (the id a sentence after its name)."""
    cases = [
        ('```python\nr = post(url, auth=("floor", "TIPBWK4uMut"))\n```\nzet `TIPBWK4uMut` niet in je script', "nl"),
        ("írd bele hogy a 616 1670 számon hívjanak vissza légyszi.", "hu"),
        ("hun vil have mit pasnummer med, er det normalt? det er 785964455255", "da"),
    ]
    for text, language in cases:
        out = scrub_record(step, [{"role": "user", "content": text}], language)[0]["content"]
        assert not [v for v in ("TIPBWK4uMut", "616 1670", "785964455255") if v in out], out
    kept = "my passport expired last year. it's a shame, the renewal costs 1234567 won"
    assert step.scrub_text(kept) == kept


def test_hungarian_id_card_words_danish_login_and_a_name_before_an_exports_marks(step: PiiScrub) -> None:
    """From blind set 25: "személyi igazolvány száma X", "szig. szám: X", a password after "logge ind",
    an addressee joined to the address by an export's "???"."""
    cases = [
        ("Bérbeadó: Kiss Anna, személyi igazolvány száma BM6733918. (szig. szám: 266838057510)", "hu"),
        ("jeg kan ikke logge ind på portalen, koden jeg brugte var 4PTXCpfM – kan man nulstille den?", "da"),
        ("the address column came out like this: Árpád Fodor???Dózsa György utca 5.???H-4852 Mindszent", None),
        ("the address column came out like this: Victoire Gautier???50, chemin de Courtois???44281 Nantes", None),
    ]
    for text, language in cases:
        out = scrub_record(step, [{"role": "user", "content": text}], language)[0]["content"]
        assert not [v for v in ("BM6733918", "266838057510", "4PTXCpfM", "Árpád", "Fodor") if v in out], out
    # the addressee the address took in is a person too, so the name is found again elsewhere
    turns = ["came out like this: Victoire Gautier???50, chemin de Courtois???44281 Nantes", "`Victoire Gautier`"]
    out = "\n".join(m["content"] for m in scrub_record(step, [{"role": "user", "content": t} for t in turns]))
    assert "Victoire" not in out and "Gautier" not in out, out


def test_remote_login_users_bullet_names_before_a_verb_and_a_code_cue(step: PiiScrub) -> None:
    """From blind set 26: the user of "sftp:nicole@nas.local" and "/home/nicole" at a line's end, a
    known first name opening a bullet of a list of found people ("- Liana cherche ..."), "le code
    c'est X"; a shopping list and a service user stay."""
    cases = [
        ("```bash\nrestic -r sftp:ottilie@nas.local:/backup backup /home/ottilie\n```", None, ["ottilie"]),
        (
            "Covoiturage :\n- Jean Dupont, 3 places\n- Marie Curie, 2 places\n- Liana cherche une place",
            "fr",
            ["Liana"],
        ),
        ("le tableau est sur le drive, le code c'est SJsAFT3aP (même que l'an dernier)", "fr", ["SJsAFT3aP"]),
    ]
    for text, language, planted in cases:
        out = scrub_record(step, [{"role": "user", "content": text}], language)[0]["content"]
        assert not [v for v in planted if v in out], out
    stay = [("Einkaufsliste:\n- Milch\n- Brot kaufen\n- Käse", "de"), ("```\ncd /home/deploy/app\n```", None)]
    for text, language in stay:
        assert scrub_record(step, [{"role": "user", "content": text}], language)[0]["content"] == text


def test_chat_speakers_contact_columns_a_doorbell_and_an_id_after_is_this_it(step: PiiScrub) -> None:
    """From blind set 27: a pasted group chat's speakers ("Martin: i'll do burgers"), a local phone in
    a CSV "contact" column, the surname on a doorbell, an id after "è questo?"; a transcript's "User:
    thanks" and a field list stay."""
    chat = (
        "ok i'm pasting the thread from our group chat\n\nMartin: i'll do burgers and the grill\n"
        "Ottavia Rinaldi: salads! and i can pick up Rembrandt from the station\nRembrandt: thx!! i'll bring drinks\n"
        "Martin: address is Via Roma 12, ring the bell marked Zys"
    )
    cases = [
        (chat, None, ["Martin", "Rembrandt", "Zys"]),
        (
            "```csv\nname,dietary,contact\nAna Lee,vegetarian,ana@x.org\nBo Li,no nuts,7539 3842\n```",
            None,
            ["7539 3842"],
        ),
        (
            "il CUP online mi chiede il passport number e non lo trovo sulla tessera vecchia. è questo? V55384953",
            "it",
            ["V55384953"],
        ),
    ]
    for text, language, planted in cases:
        out = scrub_record(step, [{"role": "user", "content": text}], language)[0]["content"]
        assert not [v for v in planted if v in out], out
    stay = "User: hello there\nAssistant: hi, how can I help?\nUser: thanks\n\nMax: 5\nMin: 2\nAvg: 3"
    assert step.scrub_text(stay) == stay


def test_a_known_first_name_opening_a_sentence_before_a_verb_of_calling_or_saying(step: PiiScrub) -> None:
    """From blind set 28: "köszi! Rosa fogja hívni" (the name opens the sentence, a verb of calling
    follows), in the languages of chat exports; an imperative opening a sentence stays."""
    cases = [
        ("köszi! Temistocle fogja hívni délután", "hu", "Temistocle"),
        ("Danke! Bruno ruft dich morgen an.", "de", "Bruno"),
        ("Merci. Denis appellera demain.", "fr", "Denis"),
    ]
    for text, language, name in cases:
        assert name not in scrub_record(step, [{"role": "user", "content": text}], language)[0]["content"]
    stay = "Porta la pizza. Viene domani."
    assert scrub_record(step, [{"role": "user", "content": stay}], "it")[0]["content"] == stay


def test_an_unclosed_sql_row_with_escaped_quotes_is_read_at_once() -> None:
    """A malformed paste (a VALUES row that never closes, full of '' escapes) must not backtrack
    over every way to split its quotes: the row pattern is possessive."""
    text = "INSERT INTO t (full_name, email) VALUES (1, '" + "O''Brien " * 40 + "and nothing closes"
    assert keyed_values(text) == []


def test_people_listed_beside_a_found_person_in_the_languages_of_chat_exports(step: PiiScrub) -> None:
    """From blind set 29: a found person is one item of a list ("Lucia Ferri, Dario Conti, Mar e la
    zia"), joined by "e", "a", "and"; in a pair the other item counts only when a known first name,
    stop-listed ones included ("Mar", "Einer"), so a company beside a person stays."""
    cases = [
        ("al tavolo 3 ci sono Lucia Ferri, Dario Conti, Mar e la zia. li separo?", "it", ["Mar"]),
        ("Jsme Jana Nováková a Einer Friis, termín 14. září, asi 80 hostů.", "cs", ["Einer", "Friis"]),
        ("ok so me, Gianni Rossi and Judit share a flat and the bills are a mess", "en", ["Judit"]),
    ]
    for text, language, planted in cases:
        out = scrub_record(step, [{"role": "user", "content": text}], language)[0]["content"]
        assert not [v for v in planted if re.search(rf"\b{v}\b", out)], out
    out = scrub_record(step, [{"role": "user", "content": "Ich habe mit Anna Nowak und Siemens gesprochen."}], "de")
    assert "Siemens" in out[0]["content"] and "Nowak" not in out[0]["content"]


def test_a_name_with_a_possessive_or_case_ending_and_a_phone_after_an_email(step: PiiScrub) -> None:
    """From blind set 29: "Brett's far", Danish "Bretts far", Hungarian "Elżbieta-nál" are the name
    with grammar glued on; "contact me, <email> or 800 5834" has its phone word before the email."""
    cases = [
        ("tak! og skriv at Brett's far kører en bus fra klubhuset kl. 8.15", "da", "Brett"),
        ("Vi mødes kl. 8.30, og Bretts far kører en bus for dem, der mangler lift.", "da", "Brett"),
        ("írd bele, hogy a kulcsot a szomszédnál Elżbieta-nál hagyom", "hu", "Elżbieta"),
        ("lovely. add that people can contact me for details, pierluigi26@example.com or 800 5834.", "en", "5834"),
    ]
    for text, language, planted in cases:
        assert planted not in scrub_record(step, [{"role": "user", "content": text}], language)[0]["content"]
    stay = "Wir brauchen mehr neue Jobs in der Stadt."
    assert scrub_record(step, [{"role": "user", "content": stay}], "de")[0]["content"] == stay


def test_words_beside_a_name_that_are_the_language_s_own_stay(step: PiiScrub) -> None:
    """spaCy's English NER on Danish runs a name on into the sentence ("Mette Holm der tager
    telefonen"); the tagger reads "devoted" as a person; a subject line's "Urlop Edyta" took in the
    word that the record uses in lower case ("idzie na urlop"): the words stay, the names go."""
    out = step.scrub_text("tak! så det er Mette Holm der tager telefonen på lørdag.")
    assert "Mette" not in out and "Holm" not in out and "der tager telefonen" in out
    out = step.scrub_text("Paoletta was a much-loved husband of Francesco and devoted grandfather of three.")
    assert "Francesco" not in out and "devoted grandfather" in out
    turns = [
        {"role": "user", "content": "Napisz maila, że Edyta idzie na urlop macierzyński od przyszłego miesiąca."},
        {"role": "assistant", "content": "Temat: Urlop Edyta i zastępstwo\n\nOd maja Edyta rozpoczyna urlop."},
    ]
    out = [t["content"] for t in scrub_record(step, turns, "pl")]
    assert "Edyta" not in " ".join(out) and "idzie na urlop macierzyński" in out[0] and "rozpoczyna urlop" in out[1]


def test_shapes_of_presidio_templates_no_generated_text_was_made_from(step: PiiScrub) -> None:
    """A title's dot ends no sentence, a name answers a question for it, a possessive is no part of
    the name, and a lower-case street takes its street type, town and postcode."""
    text = "Please have the manager call me at +33 1 96 03 54 29. I'd like to join accounts with ms. Genoveffa"
    assert "Genoveffa" not in step.scrub_text(text)
    out = step.scrub_text("Ms. Blackett flew to Budapest on Friday morning.")
    assert "Blackett" not in out and out.endswith(" flew to <LOCATION_1> on Friday morning.")
    assert step.scrub_text("What's your last name? Koyama") == "What's your last name? <PERSON_1>"
    assert step.scrub_text("¿Cómo te llamas? Lucía Pérez.") == "¿Cómo te llamas? <PERSON_1>."
    for text in ("What's your name? Sorry, I won't say.", "What should your name be? Something catchy"):
        assert step.scrub_text(text) == text
    assert step.scrub_text('Jan: "Who are you?"\nJan: "I\'m Jan\'s daughter".') == (
        '<PERSON_1>: "Who are you?"\n<PERSON_1>: "I\'m <PERSON_1>\'s daughter".'
    )
    out = step.scrub_text("may i request to have the statement sent to rua bananeira 835, teresina, pi 64016-655?")
    assert out == "may i request to have the statement sent to <ADDRESS_1>?"
    out = step.scrub_text("i once lived in ul. kazimierza wielkiego 103, kraków,  30-074. then we moved")
    assert out == "i once lived in <ADDRESS_1>. then we moved"
    text = "keys at Vicolo Agnolo, 715, code 4471. call me"
    assert "code 4471" in step.scrub_text(text)


def test_find_spans_marks_every_occurrence_of_a_value_found_once(step: PiiScrub) -> None:
    text = "It may be too that Urner was influenced by a song sung by Stephan Urner (though Urner's song...)."
    (spans,) = step.find_spans([text])
    assert sorted(text[s.start : s.end] for s in spans if s.type == "PERSON") == ["Stephan Urner", "Urner", "Urner"]
    assert step.find_spans([]) == [] and step.find_spans([""]) == [[]]


def test_paperwork_ids_a_sentence_on_a_nordic_code_a_phone_after_an_address_and_letter_closings(
    step: PiiScrub,
) -> None:
    """From blind set 30: an id a sentence after its keyword with no number between ("passport number
    doesnt match. i typed X", "o cpf dele ...: X"), Danish "hendes kode X", "Tel." ending an address
    so its phone is found (and found again alone), lower-case French street lines of a found address,
    "Üdvözlettel:" and "Yours faithfully," closing a letter, a first name's surname that is a word."""
    cases = [
        (
            "says the passport number doesnt match IRS records. i typed K58210374 which is whats on my card",
            "en",
            ["K58210374"],
        ),
        ("ele mandou o renavam e o cpf dele pra eu ver que é confiável: 518774102936", "pt", ["518774102936"]),
        ("jeg har bare brugt hendes kode Tq8vLmRw2Zk nogle gange, er det et problem?", "da", ["Tq8vLmRw2Zk"]),
        ("Kérem, utalja át a kauciót.\n\nÜdvözlettel:\nOrsolya Bakó", "hu", ["Orsolya", "Bakó"]),
        ("Please refund the deposit.\n\nYours faithfully,\nFlora Canova", "en", ["Flora", "Canova"]),
    ]
    for text, language, planted in cases:
        out = scrub_record(step, [{"role": "user", "content": text}], language)[0]["content"]
        assert not [v for v in planted if v in out], out
    turns = [
        {"role": "user", "content": "Meine Daten: Jan de Vries, Kerkstraat 5, 1234 AB Utrecht, Tel. 301 4470"},
        {"role": "assistant", "content": "Für Rückfragen erreichen Sie mich unter 301 4470."},
    ]
    out = scrub_record(step, turns, "de")
    assert "Kerkstraat" not in out[0]["content"] and all("4470" not in t["content"] for t in out), out
    turns = [
        {"role": "user", "content": '```json\n{"billing_address": "42, rue Weber???63401 Riom???France"}\n```'},
        {"role": "assistant", "content": "That gives you:\n\n```\n42, rue Weber\n63401 Riom\nFrance\n```"},
    ]
    assert "rue Weber" not in scrub_record(step, turns, "en")[1]["content"]
    turns = [
        {"role": "user", "content": "name is margot parent if that matters"},
        {
            "role": "assistant",
            "content": "Enter it as on the card: Margot Parent. If it shows a surname other than Parent, use that.",
        },
    ]
    assert "Parent" not in scrub_record(step, turns, "en")[1]["content"]
    stay = "Nie wiem, ile to kosztuje, może 250000 zł? Ein Freund sagt 180000 Forint."
    assert scrub_record(step, [{"role": "user", "content": stay}], "pl")[0]["content"] == stay


def test_a_postcode_in_a_running_sentence_and_a_dash_sign_off(step: PiiScrub) -> None:
    """From blind set 31: a lower-case street's postcode and town with the sentence going on after them,
    and a known first name signed after a dash; the words after a postcode, a dash before a word that
    is no name and the full stop after an address's town stay."""
    text = "and i live at kecskeméti utca 188., h-1936 hetvennémeti if that matters"
    out = scrub_record(step, [{"role": "user", "content": text}], "en")[0]["content"]
    assert "1936" not in out and "hetvennémeti" not in out and out.endswith(" if that matters"), out
    out = scrub_record(step, [{"role": "user", "content": "we live at 10 Oak Road, 90210 since last year"}], "en")
    assert "90210" not in out[0]["content"] and out[0]["content"].endswith(" since last year"), out
    out = scrub_record(step, [{"role": "user", "content": "yes, later. thanks!! — Xavier"}], "en")[0]["content"]
    assert "Xavier" not in out and out.startswith("yes, later. thanks!! — "), out
    stay = "The pipeline runs fine now. — Tuesday"
    assert scrub_record(step, [{"role": "user", "content": stay}], "en")[0]["content"] == stay
    for text in (
        "Draft an email about the broken heater at Luukboulevard 93, 2195 WV Eersel.",
        "She lives at 68 Alice Mews, TA4 1PS Dawnborough.",
    ):
        out = scrub_record(step, [{"role": "user", "content": text}], "en")[0]["content"]
        assert "2195" not in out and "Dawnborough" not in out and out.endswith(">."), out
