"""Planted-PII chat set: synthetic conversations with planted names, addresses and numbers, run
through the real `curator curate` (defaults) and `curator pack`, then the outputs grepped; plain
presidio is run on the same turns beside it.

The set (seeded, built in a temp dir, never in the repo): conversations written from templates in
12 Faker locales, each planting some of: a full name (also lower-cased), a first name, a street
address (inline, lower-cased, over lines, or with "???" where an export lost the line breaks), a
card number (12-digit Maestro, 19-digit Visa, 2-series Mastercard, 15-digit 2131 JCB, Amex,
16-digit Visa; grouped or not), a phone number (local without area code, dash pairs, short
bracketed, x-extension, "+41 (0)", dotted US...), an email, an IBAN, a passport / tax / licence /
account id, a password (with and without ":"). Half the conversations are an OpenAI fine-tuning
JSONL file, half a ChatGPT data export (custom instructions included). `--split tune` uses the
templates that were looked at while writing the recognizers, `--split held-out` the ones a helper
wrote blind on 2026-12-02 without reading the scrubber (see the comment above TUNE_TEMPLATES).

Surviving: a planted value is found (case-insensitive; digits compared without separators for
numbers) in its own conversation's kept record (`kept.jsonl`, mapped back through `source`), so a
surname or first name shared by two conversations is counted once each, not by accident. A name
survives when the full name, its surname or the planted first name is left as a word; an address
when its street part ("12 Main Street") or its postcode is left. Separately, every other file a
user keeps or shares (`kept/` Parquet, `report.json`, `report.html`, the console output, the text
of the packed shards, token ids decoded) is grepped for planted values that no kept record holds:
`leaked_outside_kept_records` must be empty. `dropped/`, `quarantine.parquet` and the work dir
hold raw text by design and are checked for owner-only permissions instead. Plain presidio
(`pii_bench.presidio_baseline`: default recognizers, spaCy sm) replaces every entity it finds
except DATE_TIME/NRP, and its output is checked by the same rules.

Run: `.venv/bin/python bench/pii_planted.py [--split held-out|tune|all] [--n 300] [--keep DIR]`
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import stat
import string
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import polars as pl

ROOT = Path(__file__).resolve().parents[1]
LOCALES = ("en_US", "en_GB", "de_DE", "fr_FR", "it_IT", "es_ES", "pl_PL", "nl_NL", "cs_CZ", "hu_HU", "pt_BR", "da_DK")
NUMBER_KINDS = ("card", "phone", "id", "iban", "email", "password")

# Templates: a list of (role, text) turns with {slots}. Slot names: name, name2, first, first2, first3,
# surname, street, city, post, country, address (+ _lines, _qq, _lower), card, phone, email, iban,
# id_kind + id, password. TUNE_TEMPLATES were looked at while writing the recognizers (the first 26
# were split even/odd until 2026-12-02 and both halves have been measured and inspected since);
# HELD_OUT_TEMPLATES were written on 2026-12-02 before any recognizer change of that day, measured
# once as the held-out split, then inspected: they are tune templates now. HELD_OUT_3_TEMPLATES were
# written by a helper who never read the scrubber, measured once (12:25 UTC), then inspected: tune now.
# HELD_OUT_4_TEMPLATES, by a second such helper, are the held-out split (measured, never inspected).
TUNE_TEMPLATES: list[list[tuple[str, str]]] = [
    [
        ("user", "Hi, my name is {name} and I need to update my card {card} on the account."),
        ("assistant", "Thanks {first}. I can't change cards here; please call your bank."),
        ("user", "ok. my phone is {phone} if they need it"),
    ],
    [
        ("user", "Can you write a short cover letter for me? I'm {name}, I live at {address}. Email {email}."),
        ("assistant", "Dear Hiring Manager,\n\nMy name is {name} and ...\n\nKind regards,\n{name}"),
    ],
    [
        ("user", "Please format this address for an envelope:\n{name}\n{address_lines}"),
        ("assistant", "Here it is:\n\n{name}\n{address_lines}"),
    ],
    [
        ("user", "my iban is {iban} and the transfer to {first} failed, why"),
        ("assistant", "An IBAN like {iban} can fail when the name does not match. Check with {first}."),
    ],
    [
        ("system", "The user's name is {name}. Be concise."),
        ("user", "What is a good password? Mine is {password}"),
        ("assistant", "Avoid sharing it. {password} is strong but now exposed; change it."),
    ],
    [
        ("user", "I lost my wallet with my {id_kind} {id}. What do I do?"),
        ("assistant", "Report the {id_kind} {id} as lost to the authority that issued it."),
    ],
    [
        ("user", "Log in as {email} with password {password} and check the invoice for {name}."),
        ("assistant", "I can't log in to accounts, but you can check it yourself."),
    ],
    [
        ("user", "{name} lives at {address}. Write a polite note asking {first} to move the car."),
        ("assistant", "Hi {first},\n\nCould you move your car? Thanks!"),
    ],
    [
        ("user", "Text {first} at {phone} and tell {first} the meeting moved."),
        ("assistant", "I can't send texts, but here is a message you can send to {phone}."),
    ],
    [("user", "Shipping label: {address_qq}"), ("assistant", "The label reads: {address_qq}")],
    [
        ("user", "my card number is {card} exp 04/29, is it visa or mastercard?"),
        ("assistant", "I can't look up {card}. The first digits tell the network."),
    ],
    [
        ("user", "Our team: {first}, {first2} and {first3}. {first} leads. Write a standup agenda."),
        ("assistant", "1. {first}: updates\n2. {first2}: blockers\n3. {first3}: demo"),
    ],
    [
        ("user", "Fill in the form: name {name}, tel. {phone}, {id_kind}: {id}"),
        ("assistant", "Name: {name}\nPhone: {phone}\n{id_kind}: {id}"),
    ],
    [
        ("user", "A story by {name} about a dog. Make it funny."),
        ("assistant", "Once upon a time, {first} had a dog named Biscuit..."),
    ],
    [
        ("user", "pay {card} for order 88213, send receipt to {email}"),
        ("assistant", "I can't process payments. Receipts would go to {email}."),
    ],
    [
        ("user", "how do i wire money to {iban}? recipient {name}, {address}"),
        ("assistant", "Give your bank the IBAN {iban} and the name {name}."),
    ],
    [("user", "Reach me on {phone} or at home: {address_lines}"), ("assistant", "Noted: {phone}.")],
    [
        ("user", "I'm {first}. {surname} is my last name. Can you spell {name} in NATO alphabet?"),
        ("assistant", "Sure, {first} {surname}: ..."),
    ],
    [
        ("user", "Set up the wifi with password {password} for the guests of {name}."),
        ("assistant", "Share the password {password} only with the guests."),
    ],
    [
        ("user", "Translate to German: my {id_kind} is {id}, my name is {name}."),
        ("assistant", "Mein Ausweis ist {id}, mein Name ist {name}."),
    ],
    [("user", "charge {card} please"), ("assistant", "I cannot charge cards.")],
    [
        ("user", "Is {card} a valid card number? It belongs to {name}."),
        ("assistant", "I can't validate {card}, but the Luhn check is easy to run yourself."),
    ],
    [("user", "call {phone}"), ("assistant", "I cannot place calls.")],
    [
        ("user", "Write an out-of-office reply. Urgent matters: {first2} on {phone}, or email {email}."),
        ("assistant", "I'm away until Monday. For urgent matters contact {first2} ({phone}) or {email}."),
    ],
    [("user", "password: {password}"), ("assistant", "Don't paste passwords here.")],
    [
        ("user", "The router admin login is admin / {password} and my neighbour {name} uses it too"),
        ("assistant", "Change {password} now and give {first} a separate guest network."),
    ],
]
HELD_OUT_TEMPLATES: list[list[tuple[str, str]]] = [
    [
        ("user", "hey its {first_lower} here lol. my addy is {address_lower}, can u send the package there"),
        ("assistant", "I can't ship packages, but double-check {address_lower} with the courier."),
    ],
    [
        ("user", "Draft an email to my landlord {name} about the broken heater at {address}."),
        ("assistant", "Dear {name},\n\nThe heater at {street} has not worked since Monday.\n\nBest regards,\n{first2}"),
    ],
    [
        ("user", "Here's my CV header, make it look professional:\n\n{name}\n{address_lines}\n{phone} | {email}"),
        ("assistant", "**{name}**\n{street}, {post} {city}, {country} · {phone} · {email}"),
    ],
    [
        ("user", "My daughter {first} and her friend {first2} are coming over. Suggest games for 8-year-olds."),
        ("assistant", "Here are some games {first} and {first2} might enjoy: treasure hunt, charades, musical chairs."),
    ],
    [
        ("user", "Please check this invoice:\nBill to: {name}, {address}\nCard: {card}\nTotal: $84.20"),
        ("assistant", "The invoice is addressed to {name} and charged to {card}; the total looks right."),
    ],
    [
        ("user", "my wifi password is {password} and it stopped working after the update"),
        ("assistant", "Try forgetting the network and entering {password} again."),
    ],
    [
        ("user", "Write a birthday message for my colleague {name}. She sits next to {first2}."),
        ("assistant", "Happy birthday, {first}! The whole team, {first2} included, wishes you a great year."),
    ],
    [
        ("user", "Cancel the subscription on my {id_kind} {id}, registered to {email}. Phone on file {phone}."),
        ("assistant", "I can't cancel it, but support can if you give them {email} and {phone}."),
    ],
    [
        ("user", "Meeting notes. Attendees: {name}, {name2}, {first3}. Action: {first} sends the deck by Friday."),
        ("assistant", "Summary: {first} sends the deck; {first3} and {name2} review it."),
    ],
    [
        ("user", "Send the contract to {name} at {address_qq}"),
        ("assistant", "Address the envelope to {name}, {address_qq}."),
    ],
    [
        ("user", "Who lives at {address}? I found a wallet that belongs to {name}."),
        ("assistant", "I can't look people up. Please hand {name}'s wallet to the police."),
    ],
    [
        ("user", "Is {phone} a real number? Someone called from 'the bank' and read me my card {card}."),
        ("assistant", "That is a scam. Never confirm {card} to a caller, and report {phone} to your bank."),
    ],
    [
        ("user", "Translate to French: Hello, I am {name} and my number is {phone}."),
        ("assistant", "Bonjour, je m'appelle {name} et mon numéro est le {phone}."),
    ],
    [
        ("user", "ok so {first} said i should ask u. username {email} pwd {password}"),
        ("assistant", "Please don't share passwords here, even if {first} suggested it."),
    ],
    [
        ("user", "Is this address format right? {street}, {city} {post}, {country}"),
        ("assistant", "Usually it is written:\n{street}\n{post} {city}\n{country}"),
    ],
    [
        ("user", "Transfer 200 EUR from {iban} to {name}."),
        ("assistant", "I can't move money. Ask your bank to send it from {iban} to {name}."),
    ],
    [
        ("system", "You are a helpful assistant for {name} ({email}), who lives at {address}."),
        ("user", "What's a quick dinner I can cook tonight?"),
        ("assistant", "A vegetable stir-fry with rice takes about 20 minutes."),
    ],
    [
        ("user", "{name} here. I need a new {id_kind}, the old one ({id}) expired."),
        ("assistant", "Renew the {id_kind} {id} at the office that issued it, {first}."),
    ],
    [
        ("user", "visa {card} cvv 381 exp 11/27, is this the right format for the form?"),
        ("assistant", "Never paste {card} and its CVV into a chat."),
    ],
    [
        ("user", "grandma {name_lower} moved to {address_lower}, write her a card from me and {first2}"),
        ("assistant", "Dear Grandma,\n\nWe hope you love the new place! Love, {first2}"),
    ],
]
# Held-out set 3 for bench/pii_planted.py: written blind on 2026-12-02 by a helper who did not read the scrubber
# (nothing under curator/, tests/, BENCHMARKS.md or their history was opened; only bench/pii_planted.py was read).
HELD_OUT_3_TEMPLATES: list[list[tuple[str, str]]] = [
    [
        (
            "user",
            "can you rewrite this support ticket so it sounds less angry\n\n**Ticket**\nCustomer: {name}\nEmail: {email}\n"
            "Issue: you charged my card {card} TWICE for the same order and nobody answers, ive called {phone} 4 times!!!",
        ),
        (
            "assistant",
            "Subject: Duplicate charge on my order\n\nHello,\n\nI noticed two identical charges on my card ({card}) for a single "
            "order. Could you refund one of them? You can reach me at {email} or on {phone}.\n\nThank you,\n{first}",
        ),
    ],
    [
        ("user", "convert this to json pls\n\nname,email,phone,city\n{name},{email},{phone},{city}\n{name2},,,{city}"),
        (
            "assistant",
            '```json\n[\n  {{"name": "{name}", "email": "{email}", "phone": "{phone}", "city": "{city}"}},\n'
            '  {{"name": "{name2}", "email": null, "phone": null, "city": "{city}"}}\n]\n```',
        ),
    ],
    [
        (
            "user",
            'why does this fail validation?\n```json\n{{"customer": {{"full_name": "{name}", "iban": "{iban}", '
            '"street": "{street}", "zip": "{post}", "city": "{city}"}}, "amount": 120.5}}\n```\nthe api says invalid iban',
        ),
        (
            "assistant",
            "The JSON itself is valid. Check that `{iban}` is copied without stray spaces or a missing digit and that the "
            'API expects `zip` as a string ("{post}" is fine). Some APIs also reject a `full_name` like "{name}" '
            "when it does not match the account holder.",
        ),
    ],
    [
        (
            "user",
            "writing a note for the babysitter, can you make it nicer? kids are {first} (7) and {first2} (4), bedtime 8. "
            "the code for the wifi is {password}. emergencies call me on {phone} or my sister {first3}. "
            "if u ever need an ambulance our address is {address_lower}",
        ),
        (
            "assistant",
            "**Notes for tonight**\n\n- {first} (7) and {first2} (4): bed at 8 pm\n- Wi-Fi: {password}\n"
            "- Emergencies: call me on {phone}, or {first3}\n- Our address (for an ambulance): {address}",
        ),
    ],
    [
        (
            "user",
            'Kannst du das bitte ins Englische übersetzen? "Sehr geehrte Frau Dr. {surname}, mein Sohn {first} hat seit drei '
            "Tagen Fieber. Seine Versichertennummer ist {id}. Bitte rufen Sie mich unter {phone} zurück. "
            'Mit freundlichen Grüßen, {name2}"',
        ),
        (
            "assistant",
            '"Dear Dr. {surname}, my son {first} has had a fever for three days. His insurance number is {id}. '
            'Please call me back at {phone}. Kind regards, {name2}"',
        ),
    ],
    [
        (
            "user",
            "mi casero {name} dice que le pague la fianza a esta cuenta {iban}, es normal que el IBAN no sea español?? "
            "the flat is {street} in {city}",
        ),
        (
            "assistant",
            "No es necesariamente raro: un IBAN como {iban} puede ser de otro país. Antes de pagar, pide a {first} un "
            "contrato firmado para el piso de {street} y un recibo de la fianza.",
        ),
    ],
    [
        (
            "user",
            "turn these into clean minutes:\n\n- kickoff w/ {name} + {name2}\n- {first3} out sick, cc her on everything\n"
            "- budget sign-off by {surname} before 15th\n- {first2} to send vendor list",
        ),
        (
            "assistant",
            "## Minutes\n\n**Attendees:** {name}, {name2}\n**Absent:** {first3} (cc'd on all follow-ups)\n\n### Actions\n"
            "1. Budget sign-off by {surname} before the 15th\n2. {first2} sends the vendor list",
        ),
    ],
    [
        ("user", "the label printer ate the line breaks, what does this say? SHIP TO: {name}???{address_qq} TEL {phone}"),
        ("assistant", "It reads:\n\nShip to: {name}\n{address_lines}\nTel: {phone}"),
    ],
    [
        (
            "user",
            "my dad {name_lower} cant get into his email, i told him to login with {password} but it says wrong password. "
            "his address is {email}",
        ),
        (
            "assistant",
            "If {password} is rejected for {email}, use the 'Forgot password' link on the login page. Once {first} is back "
            "in, he should pick a new password, since this one has now been written down here.",
        ),
    ],
    [
        (
            "user",
            "Write a short note to Mrs {surname} that {first3} will miss school on Thursday and Friday (dentist + grandma's "
            "birthday). From me, {name2}.",
        ),
        (
            "assistant",
            "Dear Mrs {surname},\n\nPlease excuse {first3} from school on Thursday and Friday: a dentist appointment and a "
            "family birthday. {first3} will catch up on any missed work.\n\nKind regards,\n{name2}",
        ),
    ],
    [
        (
            "user",
            "Is this filled in right?\n\nFull name: {name}\nDelivery address: {address}\nCard no {card}  exp 09/28\n"
            "Contact {phone}\n\nthe site keeps saying 'card declined'",
        ),
        (
            "assistant",
            "The fields look fine. A decline for {card} usually comes from the bank, not the form, so call them. "
            "The delivery address {address} is formatted correctly.",
        ),
    ],
    [
        (
            "user",
            "przetłumacz na angielski: Nazywam się {name}, mieszkam przy {street} w {city}. Mój numer telefonu to {phone}. "
            "Hasło do wifi to {password}.",
        ),
        ("assistant", "My name is {name}, I live at {street} in {city}. My phone number is {phone}. The wifi password is {password}."),
    ],
    [
        (
            "user",
            "Corrige mon mail stp : 'Bonjour {first2}, je t envoie le rib pour le loyer {iban} merci de virer avant le 5. "
            "Bises, {first}'",
        ),
        (
            "assistant",
            "Bonjour {first2},\n\nJe t'envoie mon RIB pour le loyer : {iban}. Merci de faire le virement avant le 5.\n\n"
            "Bises,\n{first}",
        ),
    ],
    [
        (
            "user",
            "summarise this email thread for me\n\nFrom: {name} <{email}>\nTo: me\nSubject: Re: dinner sat\n\n"
            "hey, booked a table with {first2} and {first3} for 8. lmk if you want to bring anyone. my new number is {phone}",
        ),
        (
            "assistant",
            "{first} has booked dinner for Saturday at 8 with {first2} and {first3}, asks whether you want to bring anyone, "
            "and shares a new number: {phone}.",
        ),
    ],
    [
        (
            "user",
            "booking flights, paying with {card}. the airline form asks for a {id_kind}, mine is {id}, expires 2031. "
            "my wife is {name2} now but her passport still has her maiden name {surname}, which one do I type?",
        ),
        (
            "assistant",
            "Type exactly what is printed in her passport, so {surname} as the surname until she renews it. "
            "For you, enter {id} in the {id_kind} field.",
        ),
    ],
    [
        (
            "user",
            "omg my package went to the wrong house AGAIN. tracking says delivered to {address_lower} but thats my neighbour "
            "{first_lower}'s place not mine. what do i say to the courier",
        ),
        (
            "assistant",
            'You could write: "Hi, my parcel was marked as delivered to {address_lower}, which is my neighbour\'s house, '
            'not mine. Please correct the delivery record." Meanwhile it may be worth asking {first} whether it is there.',
        ),
    ],
    [
        (
            "user",
            "{name} worked for me for three years as a sous-chef. Write a reference letter; mention that {first} trained the "
            "new staff and never missed a shift. My contact: {email}, {phone}.",
        ),
        (
            "assistant",
            "To whom it may concern,\n\n{name} worked in my kitchen as sous-chef for three years. {first} trained our new "
            "staff and never missed a shift.\n\nPlease contact me at {email} or {phone} with any questions.",
        ),
    ],
    [
        (
            "user",
            "mums card got blocked at the till. numbers {card}, name on card {name_lower}. should she call the bank or go in",
        ),
        (
            "assistant",
            "She should call the number on the back of the card straight away. The bank will ask for the name on it "
            "({name}) and may ask for the card number, {card}, but don't post it anywhere else.",
        ),
    ],
    [
        (
            "user",
            "can you sort this by surname?\n\n| Name | {id_kind} | Phone |\n|---|---|---|\n| {name} | {id} | {phone} |\n"
            "| {name2} | — | — |\n| {first3} (surname tbc) | — | — |",
        ),
        (
            "assistant",
            "| Name | {id_kind} | Phone |\n|---|---|---|\n| {name2} | — | — |\n| {name} | {id} | {phone} |\n"
            "| {first3} | — | — |\n\n{first3} goes last until the surname is known.",
        ),
    ],
    [
        ("system", "About me: I'm {first}, a freelance translator. Invoices go out from: {name}???{address_qq}??? IBAN {iban}"),
        ("user", "make me an invoice template for a 1,200-word translation job at 0.09 per word"),
        (
            "assistant",
            "**INVOICE**\n\nFrom:\n{name}\n{address_lines}\n\nBill to: ____\n\n| Item | Qty | Rate | Total |\n|---|---|---|---|\n"
            "| Translation | 1,200 words | 0.09 | 108.00 |\n\nPlease pay to IBAN {iban} within 14 days.",
        ),
    ],
    [
        (
            "user",
            "ok so i met someone at the climbing gym, his name is {first_lower} {surname}? or smth like that. he gave me "
            "{phone} and said text him. what should my first message be lol",
        ),
        (
            "assistant",
            'Keep it light! Something like: "Hey {first}, it\'s the one who kept falling off the blue route. '
            'Coffee after the next session?"',
        ),
    ],
    [
        (
            "user",
            "IT ticket template:\nUser: {name} ({email})\nLaptop asset tag: 44-118\nProblem: vpn rejects my credentials. "
            "I reset it yesterday to {password} and it still fails.\nDesk phone ext. 2291, mobile {phone}",
        ),
        (
            "assistant",
            "**User:** {name} ({email})\n**Asset:** 44-118\n**Problem:** VPN rejects credentials after yesterday's reset.\n"
            "**Contact:** ext. 2291 / {phone}\n\nNote: leave the password ({password}) out of the ticket; IT can reset it "
            "without knowing it.",
        ),
    ],
    [
        (
            "user",
            "Schrijf een opzegbrief voor mijn sportschool abonnement. Mijn gegevens:\n{name}\n{address_lines}\n"
            "Lidnummer {id}\nGeboortedatum 12-03-1988",
        ),
        (
            "assistant",
            "{name}\n{address_lines}\n\nBetreft: opzegging lidmaatschap {id}\n\nGeachte heer/mevrouw,\n\nHierbij zeg ik mijn "
            "abonnement op per de eerstvolgende mogelijke datum.\n\nMet vriendelijke groet,\n{name}",
        ),
    ],
    [
        (
            "user",
            "guest list for the bbq, write an invite I can bcc to everyone:\n- {name} {email}\n- {first2}\n- {first3} + kids\n"
            "party is at ours, {address}, sat from 2. everyone chip in 15 to {iban} for meat",
        ),
        (
            "assistant",
            "Subject: BBQ this Saturday!\n\nHi all,\n\nWe're firing up the grill at {street} ({post} {city}) this Saturday "
            "from 2 pm. Kids welcome, {first3}! Please chip in 15 for the meat to {iban}.\n\nSee you there!",
        ),
    ],
]
# Held-out set 4: written blind on 2026-12-02 by a second helper who did not read the scrubber (only
# bench/pii_planted.py was read; nothing under curator/, tests/, BENCHMARKS.md or their history).
HELD_OUT_4_TEMPLATES: list[list[tuple[str, str]]] = [
    [
        (
            "user",
            "help me w the seating chart pls. table 1: {name}, {name2} (they dont get along, seperate them!!). "
            "table 2: {first3} and her plus one. {first2} has to sit near the exit bc of the wheelchair",
        ),
        (
            "assistant",
            "Here's a layout that keeps them apart:\n\n**Table 1:** {name}, {first3} (+1)\n"
            "**Table 2:** {name2}, seat closest to the exit\n\n{first2} gets step-free access and {first} is on the other "
            "side of the room.",
        ),
    ],
    [
        (
            "user",
            "Hilf mir bitte mit einem Kaufvertrag für mein altes Auto. Verkäufer: {name}, {address}, {id_kind} {id}. "
            "Käufer ist {name2}, zahlt 4.300 € bar. write it in german but explain the clauses in english",
        ),
        (
            "assistant",
            "**Kaufvertrag über ein gebrauchtes Kraftfahrzeug**\n\nVerkäufer: {name}\nAnschrift: {street}, {post} {city}\n"
            "Käufer: {name2}\nKaufpreis: 4.300 € (bar)\n\nThe first block names seller and buyer. You don't strictly need "
            "your {id_kind} ({id}) in the contract, but {first2} may want to see it when paying.",
        ),
    ],
    [
        (
            "user",
            "make a LOST DOG poster. brown lab called Pretzel, ran off near the park in {city} on sunday. "
            "if found call {phone}, ask for {first}. reward!!",
        ),
        (
            "assistant",
            "# LOST DOG: PRETZEL\n\nBrown Labrador, last seen near the park in {city} on Sunday.\n\n"
            "{first} misses him terribly. If you see him, please call **{phone}**.\n\n## REWARD",
        ),
    ],
    [
        (
            "user",
            "why does this throw KeyError?\n```python\nusers = [\n    {{\"name\": \"{name}\", \"mail\": \"{email}\", "
            "\"pwd\": \"{password}\"}},\n    {{\"name\": \"{name2}\", \"mail\": None}},\n]\nfor u in users:\n"
            "    send(u[\"mail\"], u[\"pwd\"])\n```",
        ),
        (
            "assistant",
            "The second dict, for {name2}, has no `\"pwd\"` key, so `u[\"pwd\"]` raises on the second pass. Use "
            "`u.get(\"pwd\")` and skip users without one. Also, don't keep a real password like `{password}` in source; "
            "load it from the environment.",
        ),
    ],
    [
        (
            "user",
            "docker compose cant connect to postgres. heres my .env\n\n# maintained by {name}\nPOSTGRES_USER=app\n"
            "POSTGRES_PASSWORD={password}\nADMIN_EMAIL={email}\nSTRIPE_TEST_CARD={card}\n\n"
            "error: password authentication failed for user \"app\"",
        ),
        (
            "assistant",
            "Postgres only reads POSTGRES_PASSWORD when the data volume is first created. If the volume existed before "
            "you set it to {password}, the old password is still in use: run `docker compose down -v` and start again. "
            "And ask {first} whether {card} is really a test card before committing this file.",
        ),
    ],
    [
        (
            "user",
            "ayúdame a escribir un mensaje para el grupo de padres: soy la mamá de {first}, la excursión al zoo cuesta 12 €, "
            "salimos a las 9 desde {street}. se paga por Bizum al {phone} o transferencia a {iban} (titular {name2}). "
            "plazo el viernes",
        ),
        (
            "assistant",
            "¡Hola a todos! Soy la mamá de {first} 😊 La excursión al zoo cuesta 12 € y salimos a las 9 desde {street}. "
            "Podéis pagar por Bizum al {phone} o por transferencia a {iban} (titular: {name2}). El plazo termina el "
            "viernes. ¡Gracias!",
        ),
    ],
    [
        (
            "user",
            "Can you explain this discharge letter in plain English for my mum?\n\nPATIENT: {name}\n{id_kind}: {id}\n"
            "ADDRESS:\n{address_lines}\nDx: NSTEMI. PCI to LAD, 1 stent. Commence DAPT 12/12. F/u cardiology 6/52.\n"
            "GP: Dr. {name2}",
        ),
        (
            "assistant",
            "In short: {first} had a small heart attack. A tube (stent) was put into one of the heart's arteries to keep "
            "it open. She needs two blood-thinning tablets for 12 months and a cardiology check-up in 6 weeks. "
            "Dr. {name2}, her GP, gets a copy of this letter.",
        ),
    ],
    [
        (
            "user",
            "fill in the return form from this pls: order 114-99231, item blender, reason arrived cracked. return from\n"
            "{name_lower}\n{address_lower}\nrefund to card {card}",
        ),
        (
            "assistant",
            "**Return request**\n\n- Order: 114-99231\n- Item: blender\n- Reason: arrived cracked\n"
            "- Return from: {name}, {address}\n- Refund to: original card ({card})",
        ),
    ],
    [
        (
            "user",
            "I'm the treasurer of our chess club. Write a friendly reminder that the annual fee (60 EUR) is due. "
            "Pay to IBAN {iban}, reference = your member number. Questions to me, {name}, phone {phone}.",
        ),
        (
            "assistant",
            "Dear members,\n\nA friendly reminder that the annual fee of 60 EUR is now due. Please transfer it to\n\n"
            "{iban}\n\nwith your member number as the reference. Questions? Ask {first} on {phone}.\n\nCheckmate,\n{name}\n"
            "Treasurer",
        ),
    ],
    [
        (
            "user",
            "need to write a death notice for the local paper. my grandad {name} died last week, he was 91. "
            "he leaves his wife {first2} and grandchildren {first3} and me. funeral thursday 11am. condolence cards to "
            "{address_qq}",
        ),
        (
            "assistant",
            "It is with great sadness that we announce the death of **{name}**, aged 91. Beloved husband of {first2} and "
            "devoted grandfather of {first3}. The funeral will take place on Thursday at 11 am.\n\nCards may be sent to:\n"
            "{address_lines}",
        ),
    ],
    [
        ("system", "I'm a year 4 teacher. Keep report comments under 60 words."),
        (
            "user",
            "turn my scribbles into a report comment: {first_lower} - great reader, struggles w fractions, chats w {first3} "
            "too much. mum is mrs {surname}, wants extra hw, email {email}",
        ),
        (
            "assistant",
            "{first} is an enthusiastic reader with a wide vocabulary. Fractions are still a challenge, and {first} would "
            "benefit from fewer chats with {first3} during maths.\n\nNote for Mrs {surname} ({email}): extra fraction "
            "worksheets are attached.",
        ),
    ],
    [
        (
            "user",
            "bike got nicked last night from outside my flat ({street}, {city}). how do i report it? frame no WTU88213K, "
            "receipt is in my name {name}. tel {phone}",
        ),
        (
            "assistant",
            "Report it to the police in {city}, online if they allow it. Give them your name ({name}), where it was taken "
            "({street}), the frame number WTU88213K and a photo of the receipt. They will contact you on {phone}.",
        ),
    ],
    [
        (
            "user",
            "some guy reversed into my car at the supermarket. got his details: {name2}, {id_kind} {id}, mob {phone}. "
            "he admitted it. how do i write the claim? im {first}, living at\n{address_lines}",
        ),
        (
            "assistant",
            "Here's a draft statement:\n\n> My parked car was hit by a reversing vehicle in the supermarket car park. "
            "The driver, {name2} ({id_kind} {id}, phone {phone}), admitted responsibility at the scene.\n\n"
            "Sign it, {first}, add your address ({street}, {post} {city}) and attach photos.",
        ),
    ],
    [
        (
            "user",
            "find the duplicate rows\n\nemployee;iban;tax_id\n{name};{iban};{id}\n{name2};DE00 0000;-\n{name};{iban};{id}",
        ),
        (
            "assistant",
            "Rows 1 and 3 are identical: {name}, IBAN {iban}, tax id {id}. Delete one. {name2}'s row has a placeholder "
            "IBAN (DE00 0000), so {first2} will not be paid until it is fixed.",
        ),
    ],
    [
        ("system", "User profile: {name}. Prefers short answers."),
        (
            "user",
            "which of these are weak? exported from chrome\n\nurl,username,password\nnetflix.com,{email},{password}\n"
            "bank.example,{first_lower}.{surname},hunter2\nrouter,admin,{password}",
        ),
        (
            "assistant",
            "`hunter2` (bank) is very weak, change it first. `{password}` is decent, but you reuse it for Netflix and the "
            "router; give each its own. Then delete this CSV, {first}.",
        ),
    ],
    [
        (
            "user",
            "mail merge keeps breaking. template: 'Dear {{first_name}}, your parcel to {{address}} ships today.' "
            "data row: {first},{address_lower}\noutput just shows 'Dear ,'",
        ),
        (
            "assistant",
            "Your data has no header row, so Word can't map `first_name`. Add `first_name,address` as line 1 and quote the "
            "address (it contains a comma). Then the row renders as: 'Dear {first}, your parcel to {address} ships today.'",
        ),
    ],
    [
        (
            "user",
            "translate to polish for my cleaner pls: 'Hi {first}, the key is under the blue pot. Alarm code is {password} "
            "then press OK. Back sunday, text me on {phone} if anything'",
        ),
        (
            "assistant",
            "Cześć {first}, klucz jest pod niebieską doniczką. Kod alarmu to {password}, potem naciśnij OK. Wracam w "
            "niedzielę, w razie czego napisz do mnie SMS-a na {phone}.",
        ),
    ],
    [
        (
            "user",
            "group chat exploded while i slept, tldr?\n\n[23:41] {first}: who took my charger\n[23:42] {first2}: not me\n"
            "[23:50] {first3}: lol it was {first2}\n[00:12] {first}: {first2} i swear to god\n[00:13] {first2}: fine its "
            "in my bag",
        ),
        (
            "assistant",
            "TL;DR: {first} lost a charger, {first2} denied it, {first3} said {first2} had it, and {first2} finally "
            "admitted it's in their bag.",
        ),
    ],
    [
        (
            "user",
            "clean up this voicemail transcript, its for my husband:\n\n\"hi this is smile dental calling for "
            "{name_lower} uh just to confirm your appointment tuesday at 3 um if you need to reschedule call us back on "
            "{phone} thats {phone} thanks bye\"",
        ),
        (
            "assistant",
            "\"Hi, this is Smile Dental calling for {name}. Just confirming your appointment on Tuesday at 3. If you need "
            "to reschedule, please call us back on {phone}. Thanks, bye!\"",
        ),
    ],
    [
        (
            "user",
            "typed up my nan's recipe card, fix the spelling: 'Sunday Lasagne by {name}. From {first2}s kitchen to yours. "
            "500g mince, 2 onoins, a tin of tomatos, bake 45 min'",
        ),
        (
            "assistant",
            "**Sunday Lasagne**\n*by {name}, from {first2}'s kitchen to yours*\n\n- 500 g mince\n- 2 onions\n"
            "- 1 tin of tomatoes\n\nBake for 45 minutes. {first}'s secret was probably extra cheese.",
        ),
    ],
    [
        (
            "user",
            "Write the programme blurb: 'Scaling Postgres at a fintech', a talk by {name} with {name2}, moderated by "
            "{first3}. Questions in advance to {email}, cc {first3}.",
        ),
        (
            "assistant",
            "**Scaling Postgres at a Fintech**\n\n{first} and {first2} share what broke, and what didn't, when their "
            "payments database grew tenfold in a year. Moderated by {first3}.\n\nSend questions in advance to {email}.",
        ),
    ],
    [
        (
            "user",
            "Peux-tu rédiger une attestation d'hébergement ? Je suis {name}, j'habite {address}, et j'héberge mon cousin "
            "{name2} depuis mars. Mon {id_kind} : {id}.",
        ),
        (
            "assistant",
            "**Attestation d'hébergement**\n\nJe soussigné(e) {name}, demeurant {address}, certifie sur l'honneur héberger "
            "à mon domicile M. {name2} depuis le mois de mars.\n\nPièce d'identité : {id_kind} n° {id}\n\n"
            "Fait à {city}, le ____\n\nSignature",
        ),
    ],
    [
        (
            "user",
            "turn this git log into release notes\n\ncommit 9f2c1e4\nAuthor: {name} <{email}>\n    fix: null check on "
            "checkout\n\ncommit 77ab02d\nAuthor: {name2} <{first2}@users.noreply.github.com>\n    feat: dark mode\n"
            "    Co-authored-by: {first3}",
        ),
        (
            "assistant",
            "## Release notes\n\n### Features\n- Dark mode, by {name2} with {first3}\n\n### Fixes\n- Checkout no longer "
            "crashes on a missing value (thanks {first}!)",
        ),
    ],
    [
        (
            "user",
            "i think i got phished?? text said royal mail redelivery fee 1.45, i typed in everything: {name}, {address}, "
            "cc# {card} exp 1/30 cvc 221 and my mobile {phone}. what do i do now",
        ),
        (
            "assistant",
            "Act now:\n\n1. Call your bank and block the card {card}.\n2. Watch for calls to {phone} pretending to be the "
            "bank; hang up and call the number on your card.\n3. Scammers may post letters to {street}, so stay alert, "
            "{first}.",
        ),
    ],
]
TEMPLATES = {
    "tune": TUNE_TEMPLATES + HELD_OUT_TEMPLATES + HELD_OUT_3_TEMPLATES,
    "held-out": HELD_OUT_4_TEMPLATES,
    "all": TUNE_TEMPLATES + HELD_OUT_TEMPLATES + HELD_OUT_3_TEMPLATES + HELD_OUT_4_TEMPLATES,
}
ID_KINDS = (
    "passport number",
    "tax id",
    "driver's license",
    "account number",
    "passport no.",
    "Steuer-ID",
    "NHS number",
)


def _luhn_complete(prefix: str) -> str:
    """`prefix` plus its Luhn check digit."""
    total = 0
    for i, ch in enumerate(reversed(prefix)):
        d = int(ch)
        if i % 2 == 0:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return prefix + str((10 - total % 10) % 10)


def make_card(rng: random.Random) -> str:
    """A Luhn-valid card number of a kind presidio's regex misses or finds, in a written layout."""
    prefix, length = rng.choice(
        [
            ("50", 12),
            ("63", 12),
            ("67", 12),
            ("4", 19),
            ("2221", 16),
            ("2720", 16),
            ("2131", 15),
            ("34", 15),
            ("4", 16),
            ("51", 16),
            ("6011", 16),
            ("35", 16),
        ]
    )
    digits = _luhn_complete(prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1)))
    layout = rng.random()
    if layout < 0.4:
        return " ".join(digits[i : i + 4] for i in range(0, len(digits), 4))
    if layout < 0.6:
        return "-".join(digits[i : i + 4] for i in range(0, len(digits), 4))
    return digits


def make_phone(rng: random.Random, fake: Any) -> str:
    """A phone number in one of the layouts people write (many libphonenumber calls invalid)."""
    d = lambda n: "".join(rng.choice(string.digits) for _ in range(n))  # noqa: E731
    return rng.choice(
        [
            f"{rng.randint(2, 9)}{d(3)} {d(4)}",
            f"{rng.randint(2, 9)}{d(2)} {d(4)}",
            f"{d(2)}-{d(2)}-{d(2)}-{d(2)}",
            f"({d(2)}) {d(3)}-{d(3)}",
            f"+1-{rng.randint(2, 9)}{d(2)}-{d(3)}-{d(4)}x{d(3)}",
            f"+41 (0){d(2)} {d(3)} {d(2)} {d(2)}",
            f"{rng.randint(2, 9)}{d(2)}.{d(3)}.{d(4)}",
            f"({rng.randint(2, 9)}{d(2)}) {d(3)}-{d(4)}",
            f"+44 20 {d(4)} {d(4)}",
            fake.phone_number(),
        ]
    )


def make_id(rng: random.Random, kind: str) -> str:
    """An id value of the written kind."""
    d = lambda n: "".join(rng.choice(string.digits) for _ in range(n))  # noqa: E731
    up = lambda n: "".join(rng.choice(string.ascii_uppercase) for _ in range(n))  # noqa: E731
    return {
        "passport number": f"{up(1)}{d(8)}",
        "passport no.": f"{up(2)}{d(7)}",
        "tax id": f"{d(2)}-{d(7)}",
        "driver's license": f"{up(1)}{d(3)}-{d(4)}-{d(4)}",
        "account number": d(12),
        "Steuer-ID": f"{d(2)} {d(3)} {d(3)} {d(3)}",
        "NHS number": f"{d(3)} {d(3)} {d(4)}",
    }[kind]


def make_password(rng: random.Random) -> str:
    """A password with letters, digits and symbols."""
    chars = string.ascii_letters + string.digits + "!#$%&*?@"
    while True:
        pw = "".join(rng.choice(chars) for _ in range(rng.randint(8, 14)))
        if re.search(r"\d", pw) and re.search(r"[a-zA-Z]", pw):
            return pw


def build(n: int, split: str, seed: int = 11) -> list[dict[str, Any]]:
    """`n` conversations: each {turns: [(role, text)], planted: [(kind, value)], template, locale}."""
    from faker import Faker

    rng = random.Random(seed)
    fakers = {loc: Faker(loc) for loc in LOCALES}
    for i, f in enumerate(fakers.values()):
        f.seed_instance(seed + i)
    templates = TEMPLATES[split]
    convs = []
    for k in range(n):
        t = k % len(templates)
        loc = rng.choice(LOCALES)
        fake = fakers[loc]
        first, surname = fake.first_name(), fake.last_name()
        first2, surname2 = fake.first_name(), fake.last_name()
        street, city, post = fake.street_address().replace("\n", " "), fake.city(), fake.postcode()
        country = fake.current_country() if hasattr(fake, "current_country") else "France"
        id_kind = rng.choice(ID_KINDS)
        slots = {
            "name": f"{first} {surname}",
            "first": first,
            "surname": surname,
            "name_lower": f"{first} {surname}".lower(),
            "first_lower": first.lower(),
            "name2": f"{first2} {surname2}",
            "first2": first2,
            "first3": fake.first_name(),
            "street": street,
            "city": city,
            "post": post,
            "country": country,
            "address": f"{street}, {post} {city}",
            "address_lower": f"{street}, {post} {city}".lower(),
            "address_lines": f"{street}\n{post} {city}\n{country}",
            "address_qq": f"{street}???{post} {city}???{country}",
            "card": make_card(rng),
            "phone": make_phone(rng, fake),
            "email": fake.email(),
            "iban": fake.iban(),
            "id_kind": id_kind,
            "id": make_id(rng, id_kind),
            "password": make_password(rng),
        }
        text = " ".join(x for _, x in templates[t])
        planted: list[tuple[str, str]] = []
        if re.search(r"\{(name|name_lower|surname)\}", text):
            planted.append(("name", f"{first} {surname}"))
        if "{name2}" in text:
            planted.append(("name", f"{first2} {surname2}"))
        for key in ("first", "first2", "first3"):
            if "{" + key + "}" in text or (key == "first" and "{first_lower}" in text):
                planted.append(("first_name", slots[key]))
        if re.search(r"\{(address(_lines|_qq|_lower)?|street)\}", text):
            planted.append(("address", f"{street}\x00{post}"))
        for kind, key in (
            ("card", "card"),
            ("phone", "phone"),
            ("email", "email"),
            ("iban", "iban"),
            ("id", "id"),
            ("password", "password"),
        ):
            if "{" + key + "}" in text:
                planted.append((kind, slots[key]))
        turns = [(role, body.format(**slots)) for role, body in templates[t]]
        convs.append({"turns": turns, "planted": planted, "template": t, "locale": loc})
    return convs


def write_inputs(convs: list[dict[str, Any]], where: Path) -> list[Path]:
    """Half as an OpenAI fine-tuning JSONL file, half as a ChatGPT data export."""
    jsonl = where / "planted_openai.jsonl"
    with open(jsonl, "w", encoding="utf-8") as fh:
        for conv in convs[0::2]:
            fh.write(json.dumps({"messages": [{"role": r, "content": c} for r, c in conv["turns"]]}) + "\n")
    export = []
    for k, conv in enumerate(convs[1::2]):
        mapping: dict[str, Any] = {"root": {"id": "root", "message": None, "parent": None, "children": []}}
        parent = "root"
        for j, (role, text) in enumerate(conv["turns"]):
            node = f"n{k}-{j}"
            content = (
                {"content_type": "user_editable_context", "user_profile": text, "user_instructions": ""}
                if role == "system"
                else {"content_type": "text", "parts": [text]}
            )
            mapping[node] = {
                "id": node,
                "message": {
                    "id": node,
                    "author": {"role": "user" if role == "system" else role, "name": None, "metadata": {}},
                    "content": content,
                    "recipient": "all",
                    "metadata": {},
                    "create_time": 1700000000 + j,
                },
                "parent": parent,
                "children": [],
            }
            mapping[parent]["children"].append(node)
            parent = node
        export.append(
            {
                "title": f"Planted {k}",
                "create_time": 1700000000.0,
                "mapping": mapping,
                "current_node": parent,
                "id": f"conv-{k}",
            }
        )
    chatgpt = where / "chatgpt_export" / "conversations.json"
    chatgpt.parent.mkdir()
    chatgpt.write_text(json.dumps(export), encoding="utf-8")
    return [jsonl, chatgpt]


def run_cli(args: list[str], env: dict[str, str]) -> tuple[str, float]:
    """Run `python -m curator.cli ARGS`; returns console output (stdout + stderr) and seconds."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "curator.cli", *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=3600
    )
    if proc.returncode != 0:
        raise SystemExit(f"curator {' '.join(args[:1])} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout + proc.stderr, time.perf_counter() - start


def shared_text(out: Path, shards: Path, console: str) -> str:
    """Everything a user keeps or shares, as one text: kept records, reports, console, shard text."""
    blobs = [console]
    for path in sorted(out.rglob("*")):
        if not path.is_file() or path.is_relative_to(out / "dropped") or path.is_relative_to(out / "_work"):
            continue
        if path.name == "quarantine.parquet":
            continue
        blobs.append(
            pl.read_parquet(path).write_ndjson() if path.suffix == ".parquet" else path.read_text("utf-8", "replace")
        )
    blobs.append(shard_text(shards, out.parent / "tokenizer"))
    for path in sorted(shards.rglob("*")):
        if path.is_file() and path.suffix != ".parquet":
            blobs.append(path.read_text("utf-8", "replace"))
    return "\n".join(blobs)


def demo_tokenizer(path: Path) -> Path:
    """A small BPE tokenizer trained on sample_data text (never on the planted values)."""
    from trainer.tiny import train_tokenizer

    texts = (ROOT / "sample_data" / "oasst_en_60_trees.jsonl").read_text(encoding="utf-8").splitlines()
    return train_tokenizer(texts, path, vocab_size=1024)


def shard_text(shards: Path, tokenizer: Path) -> str:
    """The packed shards' token ids decoded back to text with the tokenizer they were packed with."""
    from curator.format.chat import load_tokenizer

    tok, _ = load_tokenizer(tokenizer)
    texts = []
    for part in sorted(shards.rglob("*.parquet")):
        frame = pl.read_parquet(part)
        if "input_ids" in frame.columns:
            texts.extend(tok.decode(ids) for ids in frame["input_ids"].to_list())
    return "\n".join(texts)


def _left(kind: str, value: str, low: str, digits_only: str, words: set[str]) -> bool:
    """Whether a planted value is left in a text (already folded: `low`, its digits, its words)."""
    if kind == "name":
        full = " ".join(value.split()).casefold()
        surname = value.split()[-1].casefold()
        return full in low or (len(surname) >= 3 and surname in words)
    if kind == "first_name":
        return value.casefold() in words
    if kind == "address":
        street, post = value.split("\x00")
        whole_post = re.search(rf"(?<![\w-]){re.escape(post.casefold())}(?![\w-])", low)  # not inside another number
        return " ".join(street.split()).casefold() in low or (len(post) >= 4 and whole_post is not None)
    if kind in ("card", "phone", "iban", "id") and sum(ch.isdigit() for ch in value) >= 6:
        return re.sub(r"[^\d]", "", value) in digits_only or value.casefold() in low
    return value.casefold() in low


def _fold(text: str) -> tuple[str, str, set[str]]:
    low = " ".join(text.split()).casefold()
    return low, re.sub(r"[^\d]", "", text), set(re.findall(r"\w+", low))


def surviving(convs: list[dict[str, Any]], texts: list[str]) -> tuple[dict[str, list[int]], list[str]]:
    """kind -> [planted, surviving], each value looked for in its own conversation's output text
    (`texts[i]` for `convs[i]`), under the rules in the module docstring; and the survivors."""
    counts: dict[str, list[int]] = {}
    survivors = []
    for conv, text in zip(convs, texts, strict=True):
        folded = _fold(text)
        for kind, value in conv["planted"]:
            c = counts.setdefault(kind, [0, 0])
            c[0] += 1
            if _left(kind, value, *folded):
                c[1] += 1
                survivors.append(f"{kind} template {conv['template']} {conv['locale']}: {value!r}")
    return counts, survivors


def kept_texts(out: Path, n: int) -> list[str]:
    """Each conversation's kept record as text: every string in it, one per line ("" when it was not
    kept; the JSON itself would hide a word behind an escaped newline), mapped back through `source`:
    OpenAI line i is conversation 2i, ChatGPT export conversation i is 2i + 1."""
    texts = [""] * n
    for line in (out / "kept.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        src = record["source"]
        k = 2 * src["index"] + (src["format"] == "chatgpt")
        texts[k] += "\n".join(_strings(record)) + "\n"
    return texts


def _strings(value: Any) -> list[str]:
    """Every string inside a decoded JSON value."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def leaked_outside_kept(convs: list[dict[str, Any]], kept: list[str], shared: str) -> list[str]:
    """Planted values found in the shared outputs (reports, console, shards, kept Parquet) while absent
    from every kept record: a leak by another path than the records themselves (must be empty)."""
    folded_shared, folded_kept = _fold(shared), _fold("\n".join(kept))
    cased_words = set(re.findall(r"\w+", shared))
    return [
        f"{kind}: {value!r}"
        for conv in convs
        for kind, value in conv["planted"]
        if _left(kind, value, *folded_shared)
        and not _left(kind, value, *folded_kept)
        and _cased_left(kind, value, folded_shared[0], cased_words)
    ]


def _cased_left(kind: str, value: str, low: str, cased_words: set[str]) -> bool:
    """A surname or first name that is an English word ("May", "Rose") is left only as written, with its
    capital: the tool's own console text ("excerpts may hold personal data") is not a leak."""
    if kind == "name":
        return " ".join(value.split()).casefold() in low or value.split()[-1] in cased_words
    if kind == "first_name":
        return value in cased_words
    return True


def presidio_texts(convs: list[dict[str, Any]]) -> tuple[list[str], float]:
    """Plain presidio (pii_bench's baseline) on the same turns: every entity it finds, except the
    DATE_TIME/NRP types ours also leaves, replaced by <TYPE>; and the seconds it took."""
    sys.path.insert(0, str(Path(__file__).parent))
    from pii_bench import presidio_baseline

    from curator.steps.pii import DEFAULT_EXCLUDED, PiiConfig

    cfg = PiiConfig()
    engine = presidio_baseline()
    turns = [text for conv in convs for _, text in conv["turns"]]
    engine.analyze_iterator(turns[:8], language="en")  # lazy loading
    start = time.perf_counter()
    results = engine.analyze_iterator(
        turns, language="en", batch_size=cfg.batch_size, score_threshold=cfg.score_threshold
    )
    seconds = time.perf_counter() - start
    scrubbed = iter(
        _replace_spans(text, [(r.start, r.end, r.entity_type) for r in rs if r.entity_type not in DEFAULT_EXCLUDED])
        for text, rs in zip(turns, results, strict=True)
    )
    return ["\n".join(next(scrubbed) for _ in conv["turns"]) for conv in convs], seconds


def _replace_spans(text: str, spans: list[tuple[int, int, str]]) -> str:
    """`text` with every span (overlaps merged) replaced by <TYPE>."""
    out, pos = [], 0
    for start, end, etype in sorted(spans):
        if end <= pos:
            continue
        out.append(text[pos : max(pos, start)] + f"<{etype}>")
        pos = end
    return "".join(out) + text[pos:]


def check_private(out: Path) -> list[str]:
    """Files or dirs that may hold raw text and are readable by others (must be empty)."""
    bad = []
    for path in [
        out / "dropped",
        out / "quarantine.parquet",
        out / "_work",
        *(out / "dropped").rglob("*"),
        *(out / "_work").rglob("*"),
    ]:
        if path.exists() and stat.S_IMODE(path.stat().st_mode) & 0o077:
            bad.append(f"{path.relative_to(out)} {oct(stat.S_IMODE(path.stat().st_mode))}")
    return bad


def main() -> None:
    """Build the set, curate and pack it with defaults, grep the outputs, print and save the figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", choices=("held-out", "tune", "all"), default="held-out")
    ap.add_argument("--n", type=int, default=300, help="conversations")
    ap.add_argument("--seed", type=int, default=11, help="picks locales, names and numbers")
    ap.add_argument("--keep", type=Path, default=None, help="keep inputs and outputs in this dir")
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "pii_planted.json")
    args = ap.parse_args()
    where = Path(tempfile.mkdtemp(prefix="pii_planted_")) if args.keep is None else args.keep
    where.mkdir(parents=True, exist_ok=True)
    convs = build(args.n, args.split, args.seed)
    inputs = write_inputs(convs, where)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    out, shards = where / "curated", where / "shards"
    old_umask = os.umask(0o022)  # what most users have: the private files must not depend on it
    try:
        console, seconds = run_cli(["curate", *map(str, inputs), "--out", str(out), "--jsonl", "--workers", "1"], env)
        tokenizer = demo_tokenizer(where / "tokenizer")
        pack_console, _ = run_cli(["pack", str(out), "--out", str(shards), "--tokenizer", str(tokenizer)], env)
    finally:
        os.umask(old_umask)
    kept = kept_texts(out, len(convs))
    counts, survivors = surviving(convs, kept)
    leaks = leaked_outside_kept(convs, kept, shared_text(out, shards, console + pack_console))
    plain, plain_seconds = presidio_texts(convs)
    plain_counts, _ = surviving(convs, plain)
    report = json.loads((out / "report.json").read_text())

    def table(c: dict[str, list[int]]) -> dict[str, Any]:
        rates = {k: {"planted": v[0], "surviving": v[1], "rate": round(v[1] / v[0], 4)} for k, v in sorted(c.items())}
        rates["structured"] = {
            "planted": sum(c.get(k, [0, 0])[0] for k in NUMBER_KINDS),
            "surviving": sum(c.get(k, [0, 0])[1] for k in NUMBER_KINDS),
        }
        return rates

    result = {
        "split": args.split,
        "seed": args.seed,
        "conversations": len(convs),
        "curate_seconds": round(seconds, 1),
        "presidio_analyze_seconds": round(plain_seconds, 1),
        "kept": report["accounting"]["kept"],
        "read": report["accounting"]["read"],
        "surviving": table(counts),
        "surviving_plain_presidio": table(plain_counts),
        "survivors": survivors,
        "leaked_outside_kept_records": leaks,
        "work_dir_after_run": sorted(str(p.relative_to(out)) for p in (out / "_work").rglob("*")),
        "readable_by_others": check_private(out),
        "templates": sorted(Counter(c["template"] for c in convs)),
    }
    print(json.dumps(result, indent=1))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    if args.keep is None:
        shutil.rmtree(where)


if __name__ == "__main__":
    main()
