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

Surviving: a planted value is found (case-insensitive; digits compared without separators, within one number, for
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

Run: `.venv/bin/python bench/pii_planted.py [--split held-out|tune] [--n 480] [--seed 11] [--keep DIR]`
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
# HELD_OUT_4_TEMPLATES, by a second such helper, were measured once (12:39 UTC) and then inspected.
# Sets 5, 6 and 7 were written on the evening of 2026-12-02 by three more helpers, under the prompt in
# `bench/pii_planted_prompt.md` (they read nothing of this project): set 5 was measured once (18:45
# UTC) and inspected, set 6 was seen in part while editing this file (tune templates now, as set 7),
# set 7 was measured once (19:00 UTC; three of its templates had been glimpsed, not tuned on) and then
# inspected. Set 8, by a fourth such helper, was measured once (2026-12-02 22:00 UTC) and then
# inspected; set 9, by a fifth, was seen in part (a formatter's diff printed it) and is tune data;
# set 10, by a sixth, was measured once (2026-12-03 07:37 UTC) and then inspected: tune now.
# set 11, by a seventh, was measured once (2026-12-03 10:50 UTC) and then inspected: tune now.
# set 12, by an eighth, was measured once (2026-12-03 11:50 UTC) and then inspected: tune now.
# set 13, by a ninth, was measured once (2026-12-03 12:07 UTC) and then inspected: tune now.
# set 14, by a tenth, was measured once (2026-12-03 12:36 UTC) and then inspected: tune now.
# set 15, by an eleventh, was measured once (2026-12-03 12:57 UTC) and then inspected: tune now.
# set 16, by a twelfth, was measured once (2026-12-03 13:48 UTC) and then inspected: tune now.
# set 17, by a thirteenth (asked for everyday-life topics), was measured once (2026-12-03 13:58
# UTC) and then inspected: tune now. Set 18, by a fourteenth (asked for everyday life and technical
# help in equal parts), was measured once (2026-12-03, before 16:02 UTC) and then inspected: tune now.
# Set 19, by a fifteenth (asked for the paperwork of ordinary life and, for a quarter, developers
# debugging customer data), was measured once (2026-12-04 20:28 UTC) and then inspected: tune now.
# Set 20, by a sixteenth (asked for pasted group chats, clubs and events, support tickets,
# recruiting and clinic bookings, half of them mostly not in English), was measured once
# (2026-12-04 20:48 UTC) and then inspected: tune now. Set 21, by a seventeenth (asked for letters
# to authorities, tax returns, disputes, family trees, weddings and funerals, rosters, bookkeeping
# exports, logs, .env files and dumps, a third mostly in Czech, Hungarian, Polish, Danish or
# Portuguese), was measured once (2026-12-04 21:01 UTC) and then inspected: tune now.
# Set 22, by an eighteenth (asked for a broad mix: transcribed screenshots, OCR, quoted email
# threads, invites, customs forms, school admin, memberships, quarrels, claims, banking apps, test
# fixtures; languages mixed), was measured once (2026-12-04 21:20 UTC) and then inspected: tune now.
# Set 23, by a nineteenth (asked for a week of one household and one small office, told by many
# people, half in other languages), was measured once (2026-12-04 21:29 UTC) and then inspected:
# tune now. Set 24, by a twentieth (asked for the commonest requests of ordinary users, spread
# evenly over English and the 10 other languages), was measured once (2026-12-04 21:37 UTC) and
# then inspected: tune now. Set 25, by a twenty-first (topics of its own choice, about half
# English), was measured once (2026-12-04 21:45 UTC) and then inspected: tune now.
# Set 26, by a twenty-second (topics of its own choice, away from the obvious ones), was measured
# once (2026-12-04 21:56 UTC) and then inspected: tune now.
# Set 27, by a twenty-third (asked to lean to everyday life admin: travel, moving, school and
# clubs, doctors, small-business invoices, group chats): about ten of its templates were glimpsed
# in a formatter's diff (2026-12-05 14:35 UTC) before it was measured, once, on the unchanged code
# (14:40 UTC); then inspected: tune now.
# Set 28, by a twenty-fourth (asked to lean to work: HR and payroll, CRM and spreadsheet cleanup,
# support replies, freelance contracts, help-desk tickets, migrations and bug reports with sample
# rows; a third mostly not in English), was measured once (2026-12-05 16:25 UTC) and then
# inspected: tune now.
# Set 29, by a twenty-fifth (asked to lean to family and personal life in many voices: an elderly
# parent, a wedding or funeral, a child's club, neighbours, a flat share, a vet, a landlord; first
# names alone often; about half mostly not in English), was measured once (2026-12-05 17:50 UTC)
# and then inspected: tune now.
# Set 30, by a twenty-sixth (asked to lean to money and official paperwork: insurance claims, tax
# returns, bank disputes, rental deposits, visas and residence permits, used cars, marketplace
# sales, parcels, utility bills; pasted emails and text copied from scanned letters; about half
# mostly not in English), was measured once (2026-12-06 03:55 UTC) and then inspected: tune now.
# HELD_OUT_31_TEMPLATES, by a twenty-seventh (asked to lean to health, school and travel: doctors,
# insurance claims, prescriptions, school enrolment and parent-teacher messages, flight, hotel and
# visa bookings, car rental, lost luggage), are the held-out split, not yet measured (the first
# template and a half were glimpsed while checking the helper's file, 2026-12-06 07:50 UTC). This file is not kept ruff-formatted (`ruff format` would print held-out text).
# Never print a held-out split's text (a formatter's diff, a line range).
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
HELD_OUT_5_TEMPLATES: list[list[tuple[str, str]]] = [
    # 1 letter to landlord
    [
        ("user", "can you write a short letter to my landlord saying the boiler is broken again? my name is {name}, i live at {address}. he can call me on {phone}"),
        ("assistant", "Of course. Here's a draft:\n\n{name}\n{address_lines}\n\nDear Landlord,\n\nI'm writing to let you know that the boiler at {street} has stopped working again. Could you arrange for an engineer to visit this week? You can reach me on {phone} at any time.\n\nKind regards,\n{name}"),
        ("user", "perfect thx, maybe sign it just {first}"),
        ("assistant", "Sure, just replace the last line with \"{first}\" and you're good to go."),
    ],
    # 2 German gym cancellation
    [
        ("user", "Hallo, ich muss meinen Fitnessstudio-Vertrag kündigen. Kannst du mir ein Schreiben aufsetzen? Ich heiße {name}, wohne in {street}, {post} {city}. Die Beiträge gehen von meinem Konto {iban} ab."),
        ("assistant", "Gern! Hier ein Entwurf:\n\n{name}\n{street}\n{post} {city}\n\nBetreff: Kündigung meiner Mitgliedschaft\n\nSehr geehrte Damen und Herren,\n\nhiermit kündige ich meine Mitgliedschaft fristgerecht zum nächstmöglichen Zeitpunkt. Bitte stellen Sie die Lastschriften von meinem Konto (IBAN {iban}) ab diesem Zeitpunkt ein und bestätigen Sie mir die Kündigung schriftlich.\n\nMit freundlichen Grüßen\n{name}"),
        ("user", "Danke! Meine Mitgliedsnummer fehlt noch, die ist {id}"),
        ("assistant", "Füge einfach unter den Betreff die Zeile \"Mitgliedsnummer: {id}\" ein, dann kann das Studio dich sofort zuordnen."),
    ],
    # 3 Python dict
    [
        ("user", "why does this throw a KeyError?\n\n```python\ncustomers = [\n    {{\"name\": \"{name}\", \"email\": \"{email}\", \"phone\": \"{phone}\", \"card\": \"{card}\"}},\n    {{\"name\": \"{name2}\", \"mail\": \"{first_lower}@example.org\"}},\n]\nfor c in customers:\n    print(c[\"name\"], c[\"email\"])\n```"),
        ("assistant", "The second dict uses the key `mail` instead of `email`, so `c[\"email\"]` fails when it reaches {name2}'s record. Either rename the key or use `c.get(\"email\")`:\n\n```python\nfor c in customers:\n    print(c[\"name\"], c.get(\"email\") or c.get(\"mail\"))\n```\n\nThat will print `{name} {email}` for the first entry and the fallback address for the second."),
    ],
    # 4 SQL insert
    [
        ("user", "i need an insert for our payouts table, columns are full_name, email, iban, created_at. the guy is {name2}, mail {email}, iban {iban}"),
        ("assistant", "Here you go:\n\n```sql\nINSERT INTO payouts (full_name, email, iban, created_at)\nVALUES ('{name2}', '{email}', '{iban}', NOW());\n```\n\nIf the name can contain an apostrophe, use a parameterised query instead of string concatenation."),
        ("user", "and how do i select him back by iban?"),
        ("assistant", "```sql\nSELECT * FROM payouts WHERE iban = '{iban}';\n```"),
    ],
    # 5 casual login reminder
    [
        ("user", "ok weird q but can u just remember this for me. netflix is {email} and the pw is {password}   dont judge"),
        ("assistant", "I can't store information between conversations, so I'd recommend putting it in a password manager instead. For now: login {email}, password {password}. Also consider changing it if you've reused it elsewhere."),
        ("user", "lol its the same one i use for everything. my sister {first2} keeps asking for it too. shes also got my card saved on her laptop, {card}, prob should remove that huh"),
    ],
    # 6 French bank letter
    [
        ("user", "Bonjour, pouvez-vous m'aider à rédiger une lettre à ma banque pour contester un prélèvement ? Je m'appelle {name}, mon IBAN est {iban} et j'habite {address}."),
        ("assistant", "Bien sûr. Voici une proposition :\n\n{name}\n{address_lines}\n\nObjet : Contestation d'un prélèvement\n\nMadame, Monsieur,\n\nJe constate sur mon compte n° {iban} un prélèvement que je n'ai pas autorisé. Je vous demande de bien vouloir procéder à son remboursement conformément à la réglementation SEPA.\n\nVeuillez agréer, Madame, Monsieur, l'expression de mes salutations distinguées.\n\n{name}"),
        ("user", "merci !! ajoutez aussi mon numéro : {phone}"),
        ("assistant", "Ajoutez simplement « Tél. : {phone} » sous votre adresse en en-tête."),
    ],
    # 7 Spanish form
    [
        ("user", "hola, estoy rellenando un formulario para el ayuntamiento y no sé qué poner en cada campo. Nombre: {name}. Mi {id_kind} es {id}. Vivo en {street}, {city}."),
        ("assistant", "¡Claro! Te lo ordeno así:\n\n- Nombre y apellidos: {name}\n- Documento ({id_kind}): {id}\n- Domicilio: {street}\n- Código postal: {post}\n- Municipio: {city}\n\nRevisa que el número del documento coincida exactamente con el que aparece en tu tarjeta."),
        ("user", "vale, y el correo es {email}, va en 'datos de contacto' no?"),
        ("assistant", "Sí, en \"Datos de contacto\" pon {email} y, si lo piden, un teléfono."),
    ],
    # 8 forwarded email with signature
    [
        ("user", "can you summarise this and tell me what he wants?\n\n---------- Forwarded message ---------\nFrom: {name} <{email}>\nDate: Mon, 3 Jun\nSubject: Re: invoice 2231\n\nHi {first2},\n\nJust following up on the invoice. We still haven't received payment, could you check with accounts? Happy to jump on a call.\n\nBest,\n{name}\nSenior Account Manager\nM: {phone}\n{address_qq}"),
        ("assistant", "Summary: {first} from the supplier is chasing payment for invoice 2231, which still hasn't arrived. He asks you to check with accounts and offers a call. If you want to ring him, his mobile is {phone}, or reply to {email}."),
        ("user", "draft a quick reply saying we paid yesterday"),
        ("assistant", "Hi {first},\n\nThanks for the nudge. Accounts confirmed the payment for invoice 2231 went out yesterday, so it should show up within 1-2 working days. Let me know if it hasn't arrived by Friday.\n\nBest,\n{first2}"),
    ],
    # 9 YAML config
    [
        ("user", "my docker compose won't connect to postgres, what's wrong?\n\n```yaml\nservices:\n  db:\n    image: postgres:16\n    environment:\n      POSTGRES_USER: {first_lower}\n      POSTGRES_PASSWORD: {password}\n  app:\n    build: .\n    environment:\n      DATABASE_URL: postgres://{first_lower}:{password}@localhost:5432/app\n      ADMIN_EMAIL: {email}\n```"),
        ("assistant", "Inside the `app` container, `localhost` refers to the app container itself, not the database. Use the service name as the host:\n\n```yaml\nDATABASE_URL: postgres://{first_lower}:{password}@db:5432/app\n```\n\nAlso, you probably don't want `{password}` committed in plain text; move it to an `.env` file and reference it with `${{POSTGRES_PASSWORD}}`."),
    ],
    # 10 CSV cleanup
    [
        ("user", "clean this csv up pls, the columns are all over the place\n\nname;phone;email\n{name};{phone};{email}\n{name2} ; ; {first2}.{surname}@mail.com\n{first3},,\"\""),
        ("assistant", "Here's a consistent version (comma-separated, empty fields left blank):\n\n```csv\nname,phone,email\n{name},{phone},{email}\n{name2},,{first2}.{surname}@mail.com\n{first3},,\n```\n\nNote that the third row only has a first name ({first3}) and no contact details, so you may want to drop it or fill it in."),
    ],
    # 11 markdown table of team
    [
        ("user", "make a markdown table of the on-call rota: {name} mon-tue ({phone}), {name2} wed-thu, {first3} fri. {first2}'s email is {email} if ppl need it"),
        ("assistant", "| Day(s) | On call | Contact |\n|---|---|---|\n| Mon–Tue | {name} | {phone} |\n| Wed–Thu | {name2} | {email} |\n| Fri | {first3} | – |\n\nI've put {email} against {first2} since that's the address you gave; add numbers for the others when you have them."),
    ],
    # 12 Polish complaint
    [
        ("user", "Cześć, potrzebuję napisać reklamację do sklepu internetowego, buty się rozkleiły po tygodniu. Dane: {name}, {address}, tel. {phone}."),
        ("assistant", "Jasne, oto propozycja:\n\n{name}\n{street}\n{post} {city}\ntel. {phone}\n\nReklamacja towaru\n\nSzanowni Państwo,\n\nzgłaszam reklamację obuwia zakupionego w Państwa sklepie, które rozkleiło się po tygodniu użytkowania. Proszę o wymianę towaru na nowy lub zwrot pieniędzy.\n\nZ poważaniem\n{name}"),
        ("user", "a zwrot niech pójdzie na konto {iban}"),
        ("assistant", "Dopisz wtedy przed podpisem: „W przypadku zwrotu proszę o przelew na rachunek {iban}.”"),
    ],
    # 13 Dutch rental
    [
        ("user", "hoi, ik ga mijn kamer onderverhuren aan {name2} voor de zomer. kun je een simpel contractje maken? ik ben {name}, adres {address}, huur overmaken naar {iban}"),
        ("assistant", "Zeker, hier een eenvoudige opzet:\n\nONDERHUUROVEREENKOMST\n\nVerhuurder: {name}, {address}\nOnderhuurder: {name2}\n\n1. De verhuurder verhuurt een kamer aan {street}, {city} van 1 juli t/m 31 augustus.\n2. De huur bedraagt € ___ per maand en wordt vóór de 1e van de maand overgemaakt op rekening {iban} t.n.v. {name}.\n3. ...\n\nLet op: check eerst of je hoofdhuurcontract onderverhuur toestaat."),
        ("user", "top. {first2} wil ook mijn wifi wachtwoord, dat is {password}, moet dat erin?"),
        ("assistant", "Nee, dat hoeft niet in het contract. Geef {first2} het wifi-wachtwoord gewoon los door."),
    ],
    # 14 Italian card issue
    [
        ("user", "Ciao, il pagamento online non va a buon fine. Ho inserito la carta {card} con scadenza 08/27 ma mi dice 'carta non valida'. È sbagliato il numero?"),
        ("assistant", "Non posso verificare la validità della carta, ma ti consiglio di non condividere il numero completo ({card}) nelle chat. Controlla che la scadenza e il CVV siano corretti e che la carta sia abilitata ai pagamenti online dall'app della banca."),
        ("user", "ok. la carta è intestata a mia moglie, {name2}, forse devo mettere il suo nome?"),
        ("assistant", "Sì, il nome del titolare deve essere esattamente quello stampato sulla carta, quindi \"{name2}\"."),
    ],
    # 15 phone dictated
    [
        ("user", "transcribe this voicemail properly: \"hi it's {first} {surname} calling, please call me back on, uh, {phone}, that's {phone}, or email me at {email}, thanks bye\""),
        ("assistant", "Voicemail from {name}:\n\n\"Hi, it's {name} calling. Please call me back on {phone}, or email me at {email}. Thanks, bye.\"\n\nCallback number: {phone}"),
    ],
    # 16 possessive / birthday party
    [
        ("user", "planning {first}'s surprise 30th. {name2}'s place is the venue ({address_lower}), can u write the invite text? rsvp to me at {phone}"),
        ("assistant", "🎉 Shhh, it's a surprise! 🎉\n\nJoin us to celebrate {first}'s 30th birthday!\n\n📍 {name2}'s place, {street}, {city}\n🕗 Saturday, 8 pm — please arrive by 7:45!\n\nRSVP to {phone}. And whatever you do, don't tell {first}!"),
        ("user", "aww love it. {first3} is bringing the cake btw"),
    ],
    # 17 shell script
    [
        ("user", "this script fails with 401, any idea?\n\n```bash\n#!/bin/bash\nexport API_USER=\"{email}\"\nexport API_PASS='{password}'\ncurl -s -X POST https://api.example.com/v1/login \\\n  -H 'Content-Type: application/json' \\\n  -d '{{\"user\": \"$API_USER\", \"pass\": \"$API_PASS\"}}'\n```"),
        ("assistant", "The JSON body is in single quotes, so `$API_USER` and `$API_PASS` are sent literally instead of being expanded. Use double quotes and escape the inner ones:\n\n```bash\ncurl -s -X POST https://api.example.com/v1/login \\\n  -H 'Content-Type: application/json' \\\n  -d \"{{\\\"user\\\": \\\"$API_USER\\\", \\\"pass\\\": \\\"$API_PASS\\\"}}\"\n```\n\nOr use `jq -n --arg u \"$API_USER\" --arg p \"$API_PASS\" '{{user:$u, pass:$p}}'` to build it safely. And since `{password}` is now in this chat, consider rotating it."),
    ],
    # 18 JSON API payload
    [
        ("user", "what's wrong with my payload? the stripe test returns 400\n\n{{\n  \"customer\": {{\n    \"name\": \"{name}\",\n    \"address\": \"{address}\",\n    \"country\": \"{country}\"\n  }},\n  \"card\": \"{card}\",\n}}"),
        ("assistant", "Two issues: there's a trailing comma after the `card` field, which is invalid JSON, and you should never send raw card numbers like `{card}` to your own backend — use the client-side tokenisation instead. Fixed structure:\n\n```json\n{{\n  \"customer\": {{\n    \"name\": \"{name}\",\n    \"address\": \"{address}\",\n    \"country\": \"{country}\"\n  }},\n  \"payment_method\": \"pm_card_visa\"\n}}\n```"),
    ],
    # 19 system turn, support bot
    [
        ("system", "You are a helpful customer-support assistant for an airline. Be concise."),
        ("user", "Hi, I need to update the passport details on my booking. Passenger is {name}, new {id_kind}: {id}. Booking was made with {email}. Also the refund from last time never came back to my card {card}."),
        ("assistant", "Thanks, {first}. I can't edit bookings directly, but you can update the document under Manage Booking → Passenger details. Enter {id} as the new {id_kind} and make sure the name matches exactly: {name}."),
        ("user", "it keeps saying the name doesnt match. on the passport its {name_lower} but all caps obvs"),
        ("assistant", "Capitalisation doesn't matter. If it still fails, please call our support line and quote the booking email {email}; an agent can correct it manually."),
    ],
    # 20 Portuguese
    [
        ("user", "Oi! Preciso mandar meus dados pro RH da empresa nova, pode montar um e-mail formal? Nome completo {name}, {id_kind} {id}, endereço {street}, {city}, CEP {post}, celular {phone}"),
        ("assistant", "Claro! Segue uma sugestão:\n\nAssunto: Envio de dados pessoais para admissão\n\nPrezados,\n\nConforme solicitado, seguem meus dados para o processo de admissão:\n\n- Nome completo: {name}\n- {id_kind}: {id}\n- Endereço: {street}, {city} – CEP {post}\n- Celular: {phone}\n\nFico à disposição para qualquer dúvida.\n\nAtenciosamente,\n{name}"),
        ("user", "valeu!! manda pra {first2} do RH, o email dela é {email}"),
    ],
    # 21 Czech
    [
        ("user", "Ahoj, můžeš mi pomoct napsat e-mail sousedovi? Jmenuje se {name2} a bydlí nade mnou na adrese {street}. Už potřetí mi vytopil koupelnu."),
        ("assistant", "Jasně, tady je návrh:\n\nDobrý den, pane {name2},\n\nrád bych Vás upozornil, že z Vašeho bytu opět protekla voda do mé koupelny, a to již potřetí. Prosím, nechte co nejdříve zkontrolovat instalaci. V případě potřeby mě kontaktujte na {email}.\n\nS pozdravem\n{name}"),
        ("user", "super, jen tam dej i moje číslo {phone}, a podepiš to jen {first}"),
        ("assistant", "Upraveno: za e-mail přidej „nebo na telefonu {phone}“ a jako podpis dej jen „{first}“."),
    ],
    # 22 Hungarian
    [
        ("user", "Szia! Kölcsönadtam pénzt {first2}-nak, és most vissza akarja utalni. Hogyan írjam meg neki a számlaszámomat? {iban}, a nevem {name}."),
        ("assistant", "Például így:\n\n\"Szia {first2}! Ide tudod utalni: {name}, számlaszám: {iban}. Közleménybe írd be, hogy 'kölcsön'. Köszi!\""),
        ("user", "és ha kérdése van hívjon a {phone} számon"),
        ("assistant", "Akkor tedd a végére: \"Ha bármi kérdés van, hívj a {phone} számon.\""),
    ],
    # 23 Danish, pasted export without line breaks
    [
        ("user", "Hej, jeg har kopieret en adresse fra et gammelt regneark, men linjeskiftene er væk: {address_qq}. Kan du sætte den op korrekt til en pakkelabel til {name}?"),
        ("assistant", "Selvfølgelig, her er labelen:\n\n{name}\n{address_lines}\n\nDe \"???\" var de tabte linjeskift."),
        ("user", "tak! og afsender er mig, {name2}, tlf {phone}"),
        ("assistant", "Afsender:\n{name2}\nTlf. {phone}"),
    ],
    # 24 password phrasings, wifi / onboarding
    [
        ("user", "writing a welcome note for our airbnb guests. wifi is called {surname}_home and the key is {password}. door code and stuff i'll add later. host is me, {name}, {phone}"),
        ("assistant", "Welcome to our home! 🏡\n\nWe're so glad you're here. A few things to get you started:\n\n📶 Wi-Fi: {surname}_home\n🔑 Network key: {password}\n\nIf anything comes up, just text {first} on {phone}.\n\nEnjoy your stay!\n{name}"),
        ("user", "can you also add that the checkout is 11 and they can leave keys with {first3} next door. oh and we changed the wifi thing, it's now {password}2 lol"),
        ("assistant", "Updated lines:\n\n🔑 Network key: {password}2\n🕚 Checkout is at 11:00 — please leave the keys with {first3} next door."),
    ],
]
HELD_OUT_6_TEMPLATES: list[list[tuple[str, str]]] = [
    # 1 casual lower-case, landlord letter
    [
        ("user", "hey can u help me write a msg to my landlord. my name is {name_lower}, i live at {address_lower} and the heating has been broken for 2 weeks. he never answers the phone so i want to email him"),
        ("assistant", "Of course. Here's a draft:\n\nSubject: Heating not working at {address}\n\nDear landlord,\n\nI am writing about the heating in my flat at {address}. It has not worked for two weeks, and I have not been able to reach you by phone. Please let me know when a repair can be arranged.\n\nKind regards,\n{name}"),
        ("user", "thx. can u add my number so he can text me, its {phone}"),
        ("assistant", "Sure, add this line before the sign-off:\n\nYou can also text me at {phone} at any time.\n\nKind regards,\n{name}"),
    ],
    # 2 German, bank transfer
    [
        ("user", "Hallo, ich muss eine Überweisung an meinen Vermieter machen, aber die Bank-App sagt \"IBAN ungültig\". Die IBAN ist {iban}, Empfänger {name2}. Kannst du sehen, was falsch ist?"),
        ("assistant", "Ich kann die Prüfsumme nicht sicher für dich berechnen, aber prüfe bitte Folgendes: Hast du die IBAN {iban} ohne Leerzeichen eingegeben, und stimmt der Ländercode am Anfang? Oft ist es ein Zahlendreher. Frag am besten {first2} direkt, ob die Nummer stimmt."),
        ("user", "ok, {first2} hat mir die nummer nochmal per mail geschickt von {email}, jetzt gehts. danke!"),
    ],
    # 3 Python code with a dict of customers
    [
        ("user", "Why does this crash with KeyError?\n\n```python\ncustomers = {{\n    \"c1\": {{\"name\": \"{name}\", \"email\": \"{email}\", \"phone\": \"{phone}\"}},\n    \"c2\": {{\"name\": \"{name2}\", \"city\": \"{city}\"}},\n}}\nfor cid, c in customers.items():\n    print(c[\"name\"], c[\"email\"])\n```"),
        ("assistant", "The second customer ({name2}) has no \"email\" key, so `c[\"email\"]` raises KeyError on the second iteration. Use `.get()`:\n\n```python\nfor cid, c in customers.items():\n    print(c[\"name\"], c.get(\"email\", \"-\"))\n```\n\nThat will print `{name} {email}` and then `{name2} -`."),
    ],
    # 4 SQL insert
    [
        ("user", "write me an sql insert for the users table (id, full_name, email, street, postcode, city, card_number). test row: {name}, {email}, {street}, {post}, {city}, card {card}"),
        ("assistant", "```sql\nINSERT INTO users (id, full_name, email, street, postcode, city, card_number)\nVALUES (1, '{name}', '{email}', '{street}', '{post}', '{city}', '{card}');\n```\n\nNote: storing raw card numbers like {card} in a plain column is not PCI compliant. Store a token from your payment provider instead."),
        ("user", "it's just my own card for testing lol, fine"),
    ],
    # 5 French, job application letter
    [
        ("system", "You are a helpful writing assistant."),
        ("user", "Bonjour ! Peux-tu m'aider à écrire une lettre de motivation ? Je m'appelle {name}, j'habite {street} à {city} ({post}). Mon téléphone : {phone}, mail {email}."),
        ("assistant", "Bien sûr ! Voici un début :\n\n{name}\n{address_lines}\n{phone} · {email}\n\nMadame, Monsieur,\n\nC'est avec un grand intérêt que je vous adresse ma candidature...\n\nJe vous prie d'agréer, Madame, Monsieur, l'expression de mes salutations distinguées.\n\n{name}"),
    ],
    # 6 password phrasing, wifi share
    [
        ("user", "my roommate {first2} keeps asking for the wifi, how do i write it on a card nicely? network is HomeNet_5G and the code is {password}"),
        ("assistant", "Something like:\n\nWelcome home, {first2}!\nWi-Fi: HomeNet_5G\nKey: {password}\n\nYou could also print a QR code so nobody has to type {password} by hand."),
        ("user", "perfect. also {first3} is moving in next month, should i change it?"),
        ("assistant", "It's a good idea to change it whenever people move out, not necessarily when {first3} moves in. If you do change it, just update the card."),
    ],
    # 7 Spanish, lost card
    [
        ("user", "he perdido mi tarjeta, el número era {card}. ¿qué hago? estoy de viaje en {country}"),
        ("assistant", "Lo primero es bloquear la tarjeta que termina como {card} llamando al número de emergencias de tu banco o desde la app. Luego denuncia la pérdida a la policía local en {country} si tu banco lo pide."),
        ("user", "vale. el banco me pide mi {id_kind}, es {id}, y mi nombre completo {name}. lo pongo así en el formulario?"),
        ("assistant", "Sí: Nombre: {name}; {id_kind}: {id}. Revisa que coincida exactamente con el documento."),
    ],
    # 8 forwarded email
    [
        ("user", "Can you summarize this email for me?\n\n---------- Forwarded message ---------\nFrom: {name} <{email}>\nDate: Mon, 3 Jun\nSubject: Re: invoice 2231\nTo: accounts\n\nHi,\n\nplease send the refund to my account {iban} (holder {name}). my new address is {address_qq} in case you need it for the records.\n\nCheers,\n{first}"),
        ("assistant", "Summary: {first} ({email}) is asking for the refund on invoice 2231 to be sent to IBAN {iban}, in the name {name}, and gives a new address: {address_lines}."),
    ],
    # 9 YAML config with password
    [
        ("user", "my docker compose won't start postgres, help\n\n```yaml\nservices:\n  db:\n    image: postgres:16\n    environment:\n      POSTGRES_USER: {first_lower}\n      POSTGRES_PASSWORD: {password}\n      POSTGRES_DB: shop\n    ports:\n      - \"5432:5432\"\n```\nerror: role \"postgres\" does not exist"),
        ("assistant", "Your container creates the user `{first_lower}` instead of `postgres`, so connect with `psql -U {first_lower} -d shop`. The password is the one you set ({password}). Consider moving it into an `.env` file rather than committing it."),
    ],
    # 10 Polish, list of people
    [
        ("user", "zrób mi tabelkę w markdown z tymi osobami: {name} tel {phone}, {name2} mail {email}, i jeszcze {first3} bez kontaktu"),
        ("assistant", "| Imię i nazwisko | Telefon | E-mail |\n|---|---|---|\n| {name} | {phone} | — |\n| {name2} | — | {email} |\n| {first3} | — | — |"),
    ],
    # 11 phone dictated in words
    [
        ("user", "i'm on the phone with the courier, he said call back on {phone}, ask for {first}. can you remind me what to say? they left my parcel at the wrong house, my address is {address}"),
        ("assistant", "When you call {phone} and {first} picks up, say: \"Hi {first}, my parcel was delivered to the wrong house. My address is {address}. Could you check the proof-of-delivery photo and arrange a redelivery?\""),
    ],
    # 12 Italian, possessive & names after punctuation
    [
        ("user", "Ciao! Devo scrivere gli auguri per il matrimonio di {first} e {first2}.{name}'s family is from abroad so maybe mix italian and english? their address for the card: {address_lines}"),
        ("assistant", "Ecco una proposta:\n\nCari {first} e {first2},\ntanti auguri per il vostro giorno speciale! Wishing you a lifetime of love and laughter.\n\nSulla busta:\n{name}\n{address_lines}"),
    ],
    # 13 CSV cleanup
    [
        ("user", "clean this csv, the phone column is messy:\n\nname,phone,email,iban\n{name},{phone},{email},{iban}\n\"{surname}, {first2}\",,{email},\n"),
        ("assistant", "Here's a cleaned version, with the second row's name turned into \"First Surname\" order:\n\n```csv\nname,phone,email,iban\n{name},{phone},{email},{iban}\n{first2} {surname},,{email},\n```\n\nThe second row reuses {email}; is that a duplicate?"),
    ],
    # 14 Dutch, bol.com style complaint with card
    [
        ("user", "Ik heb twee keer betaald voor dezelfde bestelling!! kaart {card}, op naam van {name}. Kun je een klachtmail schrijven?"),
        ("assistant", "Natuurlijk:\n\nBeste klantenservice,\n\nOp mijn kaart ({card}) is dezelfde bestelling twee keer afgeschreven. Ik verzoek u het dubbel betaalde bedrag terug te storten.\n\nMet vriendelijke groet,\n{name}"),
        ("user", "zet ook mijn adres erbij: {address}"),
        ("assistant", "Voeg onder je naam toe:\n{name}\n{address}"),
    ],
    # 15 JSON API payload with id
    [
        ("user", "The API returns 422 for this body, what's wrong?\n\n{{\"customer\": {{\"fullName\": \"{name}\", \"documentType\": \"{id_kind}\", \"documentNumber\": {id}, \"email\": \"{email}\"}}}}"),
        ("assistant", "`documentNumber` is sent as a bare value instead of a string. Quote it:\n\n```json\n{{\"customer\": {{\"fullName\": \"{name}\", \"documentType\": \"{id_kind}\", \"documentNumber\": \"{id}\", \"email\": \"{email}\"}}}}\n```\nMany validators reject ids like {id} as numbers because of leading zeros or letters."),
    ],
    # 16 Portuguese, password reset phrasing
    [
        ("user", "oi, esqueci qual senha eu coloquei no roteador... acho que era {password} ou algo parecido. como eu reseto?"),
        ("assistant", "Se {password} não funcionar, segure o botão de reset por uns 10 segundos. Depois entre em 192.168.0.1 com as credenciais de fábrica e defina uma senha nova."),
        ("user", "funcionou com a antiga mesmo kkk. valeu! ah, e o técnico {name2} deixou o número dele {phone}, devo salvar?"),
        ("assistant", "Vale a pena salvar o contato de {name2} ({phone}) caso o problema volte."),
    ],
    # 17 email signature
    [
        ("user", "make my email signature look more professional:\n\n{first} {surname} | sales\nmob. {phone}\n{email}\n{street}, {city}"),
        ("assistant", "Here's a cleaner layout:\n\n**{name}**\nSales Manager\nM: {phone}\nE: {email}\n{address}\n{country}"),
    ],
    # 18 Czech, visa form with id and address
    [
        ("user", "ahoj, vyplňuju formulář na vízum. jméno: {name}, {id_kind}: {id}, bydliště {address}, {country}. Jak to mám napsat anglicky do kolonky 'Permanent address'?"),
        ("assistant", "Do kolonky 'Permanent address' napiš:\n\n{address_lines}\n\nJméno piš přesně jako v dokladu: {name}, a číslo dokladu {id} bez mezer."),
    ],
    # 19 shell script with secrets
    [
        ("user", "is this safe?\n\n```bash\n#!/bin/bash\nexport SMTP_USER=\"{email}\"\nexport SMTP_PASS='{password}'\ncurl --url smtp://mail.example.com --user \"$SMTP_USER:$SMTP_PASS\" --mail-rcpt \"{email}\"\n```"),
        ("assistant", "Not really: the password ({password}) is hardcoded and will end up in your shell history and git. Read it from a file instead:\n\n```bash\nSMTP_PASS=$(cat ~/.smtp_pass)\n```\nand make sure the file is `chmod 600`."),
    ],
    # 20 Hungarian, birthday party invite list
    [
        ("user", "szia! segíts megírni egy meghívót. vendégek: {name}, {name2} és {first3}. a buli nálam lesz: {address}. ha valaki nem találja, hívjon: {phone}"),
        ("assistant", "Kedves {first}, {first2} és {first3}!\n\nSzeretettel meghívlak titeket a születésnapi bulimra!\nHelyszín: {address}\nHa eltévednétek, hívjatok: {phone}\n\nVárlak titeket!"),
    ],
    # 21 Slack-like export, several speakers
    [
        ("user", "[10:02] {name}: did anyone get the iban for the venue deposit?\n[10:05] {name2}: yes it's {iban}, ref WEDDING-JUNE\n[10:06] {name}: thx {first2}!\n\ncan you turn this into a short to-do for me"),
        ("assistant", "To-do:\n1. Pay the venue deposit to {iban} with reference WEDDING-JUNE.\n2. Tell {first2} once it's done.\n3. Keep the receipt for {first}'s records."),
    ],
    # 22 Danish, card + phone in a sentence
    [
        ("user", "hej, jeg skal ringe til banken om et mistænkeligt køb på mit kort {card}. deres nummer er {phone} right? og hvad skal jeg sige"),
        ("assistant", "Tjek nummeret på bagsiden af kortet, før du ringer til {phone}. Sig: \"Jeg hedder {name}, og der er et køb på mit kort, der ender på de sidste cifre af {card}, som jeg ikke genkender. Jeg vil gerne spærre kortet.\""),
        ("user", "mange tak"),
    ],
    # 23 markdown table of employees with ids, system turn
    [
        ("system", "You are an HR assistant. Be concise."),
        ("user", "Put these into a markdown table:\n- {name}, {id_kind} {id}, starts Monday\n- {name2}, no docs yet, email {email}"),
        ("assistant", "| Name | Document | Status |\n|---|---|---|\n| {name} | {id_kind}: {id} | starts Monday |\n| {name2} | missing ({email}) | waiting for docs |\n\nShall I draft a reminder to {first2}?"),
        ("user", "yes pls, short"),
        ("assistant", "Hi {first2}, please send your documents before your start date so we can finish onboarding. Thanks!"),
    ],
    # 24 typo-heavy, iban + address for a refund form, password in prose
    [
        ("user", "helo, i need to fil a refund form for the airline, they want full nmae, adress, and bank acount. mine: {name}, {address_lines}, iban {iban}"),
        ("assistant", "Here's how to fill it in:\n\nFull name: {name}\nAddress: {address}, {country}\nIBAN: {iban}\n\nDouble-check the IBAN; a single wrong digit will delay the refund."),
        ("user", "also the portal login keeps failing, i type {password} and it says wrong. the username is {email}"),
        ("assistant", "If {password} is rejected for {email}, use the \"Forgot password\" link rather than trying repeatedly, since most airline portals lock the account after a few attempts."),
    ],
]
HELD_OUT_7_TEMPLATES: list[list[tuple[str, str]]] = [
    # 1 letter to landlord, casual english
    [
        ("user", "can u help me write a short email to my landlord? his name is {name2}. the heating in our flat at {address} has been broken since monday and nobody answers the phone. im {name}, been renting there 3 yrs"),
        ("assistant", "Of course. Here's a draft:\n\nSubject: Heating not working at {street}\n\nDear {name2},\n\nI'm writing to let you know that the heating in my flat at {address} has not been working since Monday. I tried to reach you by phone several times but couldn't get through.\n\nCould you please arrange for a repair as soon as possible? I'm available most afternoons to let a technician in.\n\nKind regards,\n{name}"),
        ("user", "perfect, maybe add that {first2} promised to fix it last winter already"),
        ("assistant", "Sure, you can add this line after the first paragraph:\n\n\"This is the same issue that came up last winter, when you kindly promised it would be fixed permanently.\"\n\nI kept it polite rather than naming it as a broken promise, which usually gets a faster response."),
    ],
    # 2 german cancellation with iban
    [
        ("user", "Kannst du mir eine Kündigung für mein Fitnessstudio schreiben? Mitgliedsname {name}, Adresse:\n{address_lines}\nDie Beiträge werden von meinem Konto {iban} abgebucht, das soll sofort aufhören."),
        ("assistant", "Gerne, hier ein Entwurf:\n\n{name}\n{address_lines}\n\nKündigung meiner Mitgliedschaft\n\nSehr geehrte Damen und Herren,\n\nhiermit kündige ich meine Mitgliedschaft fristgerecht zum nächstmöglichen Termin. Bitte bestätigen Sie mir die Kündigung schriftlich.\n\nGleichzeitig widerrufe ich das SEPA-Lastschriftmandat für das Konto {iban}. Bitte buchen Sie nach dem Vertragsende keine Beiträge mehr ab.\n\nMit freundlichen Grüßen\n{name}"),
        ("user", "danke!! soll ich das per einschreiben schicken?"),
        ("assistant", "Ja, ein Einschreiben mit Rückschein ist sinnvoll, damit du den Zugang der Kündigung nachweisen kannst."),
    ],
    # 3 python dict with customers
    [
        ("user", "why does this throw a KeyError?\n\n```python\ncustomers = [\n    {{\"name\": \"{name}\", \"email\": \"{email}\", \"phone\": \"{phone}\", \"card\": \"{card}\"}},\n    {{\"name\": \"{name2}\", \"mail\": \"{first2}@example.org\"}},\n]\nfor c in customers:\n    print(f\"{{c['name']}} <{{c['email']}}>\")\n```"),
        ("assistant", "The second dictionary uses the key `\"mail\"` instead of `\"email\"`, so `c['email']` fails when the loop reaches {name2}. Either rename the key or use `.get()`:\n\n```python\nfor c in customers:\n    print(f\"{{c['name']}} <{{c.get('email') or c.get('mail')}}>\")\n```\n\nFor the first entry this prints `{name} <{email}>`."),
    ],
    # 4 SQL insert
    [
        ("user", "postgres says syntax error near \"iban\", what's wrong\n\nINSERT INTO clients (full_name, email, iban, national_id)\nVALUES ('{name}', '{email}', '{iban}', '{id}')\nON CONFLICT (email) DO UPDATE SET iban = EXCLUDED.iban"),
        ("assistant", "The statement itself looks valid for PostgreSQL 9.5+. The usual causes of that error are:\n\n1. A missing semicolon on the previous statement in your script, so Postgres reads both as one.\n2. An older server version without `ON CONFLICT`.\n\nTry running it alone:\n\n```sql\nINSERT INTO clients (full_name, email, iban, national_id)\nVALUES ('{name}', '{email}', '{iban}', '{id}')\nON CONFLICT (email) DO UPDATE SET iban = EXCLUDED.iban;\n```\n\nAlso make sure there's a unique constraint on `email`, otherwise `ON CONFLICT (email)` raises a different error."),
    ],
    # 5 password phrasings, casual
    [
        ("user", "my mum keeps forgetting the wifi login lol. i want to print a little card for the fridge. network is {surname}_home and the key is {password}"),
        ("assistant", "Cute idea! Something like this:\n\n---\nWi-Fi\nNetwork: {surname}_home\nKey: {password}\n---\n\nYou could also generate a QR code with the string `WIFI:T:WPA;S:{surname}_home;P:{password};;` so she can just scan it with her phone."),
        ("user", "omg the qr thing is genius. also she uses the same one for her email which is {email}, is that bad"),
        ("assistant", "Yes, reusing it is risky: anyone who sees the fridge card could log into her email. I'd give the email account its own password and turn on two-step verification for {email}."),
    ],
    # 6 french complaint
    [
        ("user", "Bonjour, j'ai besoin d'une lettre de réclamation pour un colis jamais reçu. Je m'appelle {name}, mon numéro c'est le {phone} et mon mail {email}. Commande passée le 3 mars."),
        ("assistant", "Bonjour {first},\n\nVoici une proposition :\n\nObjet : Réclamation – colis non reçu (commande du 3 mars)\n\nMadame, Monsieur,\n\nJ'ai passé commande sur votre site le 3 mars et, à ce jour, je n'ai toujours pas reçu mon colis. Je vous remercie de bien vouloir lancer une enquête auprès du transporteur ou procéder au remboursement.\n\nVous pouvez me joindre au {phone} ou par e-mail à {email}.\n\nVeuillez agréer, Madame, Monsieur, l'expression de mes salutations distinguées.\n\n{name}"),
    ],
    # 7 spanish form with id
    [
        ("user", "Tengo que rellenar un formulario del ayuntamiento y no entiendo qué poner en 'documento'. Mis datos: {name}, {id_kind} {id}, vivo en {street}, {post} {city}."),
        ("assistant", "En el campo «documento» se pone normalmente el tipo y el número de tu identificación. Quedaría así:\n\n- Nombre y apellidos: {name}\n- Tipo de documento: {id_kind}\n- Número: {id}\n- Domicilio: {street}\n- Código postal: {post}\n- Municipio: {city}\n\nSi el formulario pide DNI/NIE específicamente y tu documento es otro, indícalo en observaciones."),
    ],
    # 8 forwarded email with signature, temp password
    [
        ("user", "can you summarize this for me, it's from IT:\n\n---------- Forwarded message ---------\nFrom: {name2} <{email}>\nSubject: Your new account\n\nHi {first},\n\nyour account has been created. Log in with your email and the temporary one: {password} (you'll be asked to change it on first login).\n\nIf anything doesn't work just call me.\n\nBest,\n{name2}\nIT Service Desk\nTel. {phone}\n{street} | {post} {city}"),
        ("assistant", "Summary: {name2} from the IT Service Desk set up your account. You sign in with your email and the temporary password {password}, and you'll have to choose a new one the first time you log in. If there are problems, you can call {first2} at {phone}."),
    ],
    # 9 CSV of participants
    [
        ("user", "turn this into a markdown table pls\n\nname,email,phone,diet\n{name},{email},{phone},veggie\n{name2},{first2}.{surname}@gmail.com,,none\n{first3},,,vegan"),
        ("assistant", "| Name | Email | Phone | Diet |\n|---|---|---|---|\n| {name} | {email} | {phone} | veggie |\n| {name2} | {first2}.{surname}@gmail.com | – | none |\n| {first3} | – | – | vegan |\n\nNote that {first3} has no surname or contact details in your data, so you may want to fill those in."),
    ],
    # 10 YAML config
    [
        ("user", "docker compose won't start the mailer, here's the config\n\n```yaml\nmailer:\n  image: mailer:latest\n  environment:\n    SMTP_USER: {email}\n    SMTP_PASS: {password}\n    FROM_NAME: \"{name}\"\n  volumes:\n    - /home/{first_lower}/mail:/data\n```"),
        ("assistant", "Nothing in the YAML looks syntactically wrong, so check the logs with `docker compose logs mailer`. Two common issues:\n\n- If the password contains special characters like `:` or `#`, quote it: `SMTP_PASS: \"{password}\"`.\n- Make sure `/home/{first_lower}/mail` exists on the host.\n\nAlso, consider moving credentials into an `.env` file instead of committing them to the compose file."),
    ],
    # 11 card dictation casual
    [
        ("user", "the hotel wants me to confirm the booking by phone and read my card out, i'm nervous I'll mess up. can you split it into chunks I can read out? it's {card}, exp 08/27, name on card {name}"),
        ("assistant", "Sure. Read it in groups of four, slowly:\n\n{card}\n\nThen say: \"expiry zero-eight, twenty-seven\", and \"the name on the card is {name}\".\n\nOne tip: a legitimate hotel should never ask for your PIN, only the card number, expiry and maybe the security code."),
    ],
    # 12 polish invoice with iban
    [
        ("user", "Cześć, potrzebuję wzoru faktury. Sprzedawca: {name}, {address}. Numer konta: {iban}. Nabywca: {name2}."),
        ("assistant", "Jasne, oto prosty wzór:\n\nFAKTURA nr 1/2024\n\nSprzedawca:\n{name}\n{address}\n\nNabywca:\n{name2}\n\n| Lp. | Nazwa usługi | Ilość | Cena netto | VAT | Wartość brutto |\n|---|---|---|---|---|---|\n| 1 | ... | 1 | ... | 23% | ... |\n\nTermin płatności: 14 dni\nNumer konta: {iban}\n\nPodpis: {name}"),
        ("user", "a adres nabywcy? {first2} mieszka gdzieś w {city}, nie pamiętam dokładnie"),
        ("assistant", "Na fakturze potrzebny jest pełny adres nabywcy, więc warto zapytać {first2} o dokładne dane przed wystawieniem."),
    ],
    # 13 dutch, address_qq from export
    [
        ("user", "Ik heb een export uit ons oude CRM en de adressen zien er zo uit: {address_qq}. Hoe krijg ik die ??? weer terug naar nieuwe regels in Excel?"),
        ("assistant", "Die ??? zijn waarschijnlijk de oorspronkelijke regeleinden die bij het exporteren verloren zijn gegaan. In Excel kun je ze zo terugzetten:\n\n1. Selecteer de kolom.\n2. Ctrl+H (Zoeken en vervangen).\n3. Zoeken naar: `???` – let op, `?` is een jokerteken, dus typ `~?~?~?`.\n4. Vervangen door: druk op Ctrl+J (regeleinde).\n\nDan wordt het:\n{address_lines}"),
    ],
    # 14 slack-like with system
    [
        ("system", "You are a helpful assistant inside the team's Slack workspace."),
        ("user", "@assistant can u remind {first_lower} that the shared drive login changed, new one is {password}, and that he should ping {first2} if it doesn't work"),
        ("assistant", "Here's a message you can post:\n\n> Hey @{first_lower}, heads-up: the shared drive login changed. The new password is `{password}`. If it doesn't work, ping {first2}. 👍\n\nYou might prefer to send the password in a DM instead of a channel."),
    ],
    # 15 phone in words-and-digits, Italian possessive
    [
        ("user", "Devo scrivere un messaggio alla maestra di mia figlia. Lei è {name2}. Voglio dirle che il numero di casa è cambiato, adesso è il {phone} (quello vecchio non esiste più), e che la nonna, {name}, la verrà a prendere giovedì."),
        ("assistant", "Ecco una proposta:\n\nGentile maestra {surname},\n\nLe scrivo per comunicarLe che il nostro numero di casa è cambiato: il nuovo numero è {phone}. Il vecchio numero non è più attivo.\n\nInoltre, giovedì la bambina verrà a prenderla la nonna, {name}.\n\nCordiali saluti"),
        ("user", "no aspetta, la maestra si chiama {name2}, {surname} è il cognome della nonna"),
        ("assistant", "Hai ragione, scusa. Allora l'inizio diventa:\n\nGentile maestra {name2},\n\ne il resto rimane uguale, con la nonna {name} che verrà giovedì e il nuovo numero {phone}."),
    ],
    # 16 shell curl with json body
    [
        ("user", "this curl returns 401, what am I doing wrong?\n\ncurl -X POST https://api.example.com/v1/payments \\\n  -u {email}:{password} \\\n  -H 'Content-Type: application/json' \\\n  -d '{{\"card_number\": \"{card}\", \"holder\": \"{name}\", \"amount\": 4200}}'"),
        ("assistant", "A 401 means the credentials were rejected. Things to check:\n\n1. Most payment APIs expect an API key, not your login email and password. `-u {email}:{password}` sends Basic auth with those exact values.\n2. If the password contains characters like `!` or `$`, the shell may interpret them. Put it in single quotes: `-u '{email}:{password}'`.\n\nAlso, sending a raw card number like `{card}` directly usually requires PCI compliance. Most providers want you to tokenize the card on the client first."),
    ],
    # 17 portuguese brazilian
    [
        ("user", "oi! preciso mandar uma mensagem pro suporte do banco, alguém fez uma compra no meu cartão {card} que eu não reconheço. meu nome é {name}, celular {phone}"),
        ("assistant", "Oi, {first}! Segue uma sugestão de mensagem:\n\nOlá, meu nome é {name}. Identifiquei uma compra que não reconheço no meu cartão {card}. Peço o bloqueio imediato do cartão e a contestação da compra. Meu celular para contato é {phone}.\n\nObrigado(a).\n\nDica: ligue também para a central do banco, porque o bloqueio por telefone costuma ser mais rápido."),
    ],
    # 18 czech
    [
        ("user", "Ahoj, pomůžeš mi napsat žádost o prodloužení nájmu? Jsem {name}, bydlím na adrese {address}, pronajímatelka je paní {name2}. Tel. {phone}."),
        ("assistant", "Ahoj, tady je návrh:\n\nVážená paní {surname},\n\nobracím se na Vás s žádostí o prodloužení nájemní smlouvy k bytu na adrese {address}, která končí k 30. 6. Byl(a) bych rád(a), kdybychom smlouvu prodloužili o další rok za stávajících podmínek.\n\nV případě dotazů mě můžete kontaktovat na čísle {phone}.\n\nS pozdravem\n{name}"),
        ("user", "oprav to, paní {name2} je pronajímatelka, ne já"),
        ("assistant", "Máš pravdu, oslovení má být: \"Vážená paní {name2},\" a podpis zůstává {name}."),
    ],
    # 19 hungarian
    [
        ("user", "Szia! Le tudnád fordítani angolra? \"Alulírott {name} ({id_kind}: {id}) kérem, hogy a fizetésemet a {iban} számlaszámra utalják.\""),
        ("assistant", "Of course. In English:\n\n\"I, the undersigned {name} ({id_kind}: {id}), request that my salary be transferred to the account number {iban}.\""),
        ("user", "köszi! és ha {name2} nevében írom?"),
        ("assistant", "Then it would be: \"On behalf of {name2}, I request that their salary be transferred to the account number {iban}.\" You'd normally need a signed authorisation from {first2} as well."),
    ],
    # 20 danish, lower-case address
    [
        ("user", "hej, kan du rette min tekst? \"jeg hedder {name_lower} og jeg er flyttet til {address_lower}. min nye mail er {email}, skriv gerne hvis i har spørgsmål\""),
        ("assistant", "Her er en rettet version:\n\n\"Jeg hedder {name}, og jeg er flyttet til {address}. Min nye mail er {email}. Skriv gerne, hvis I har spørgsmål.\"\n\nJeg har rettet store bogstaver i navn og adresse og tilføjet kommaer."),
    ],
    # 21 typo-ish english, possessive names
    [
        ("user", "pls fix the grammer: me and {first} moved into {first2}'s old place at {address_lower} last week, {first}s number is still {phone} tho"),
        ("assistant", "Here you go:\n\n\"{first} and I moved into {first2}'s old place at {address} last week, but {first}'s number is still {phone}.\"\n\nChanges: \"me and {first}\" → \"{first} and I\" as the subject, added the apostrophe in \"{first}'s\", and replaced \"tho\" with \"but\"."),
    ],
    # 22 JSON record
    [
        ("user", "validate this json, my parser chokes on it\n\n{{\n  \"customer\": {{\n    \"fullName\": \"{name}\",\n    \"email\": \"{email}\",\n    \"documents\": [{{\"type\": \"{id_kind}\", \"value\": \"{id}\"}}],\n    \"bank\": {{\"iban\": \"{iban}\",}}\n  }}\n}}"),
        ("assistant", "The problem is the trailing comma after the IBAN: `{{\"iban\": \"{iban}\",}}`. JSON doesn't allow trailing commas. Fixed version:\n\n```json\n{{\n  \"customer\": {{\n    \"fullName\": \"{name}\",\n    \"email\": \"{email}\",\n    \"documents\": [{{\"type\": \"{id_kind}\", \"value\": \"{id}\"}}],\n    \"bank\": {{\"iban\": \"{iban}\"}}\n  }}\n}}\n```"),
    ],
    # 23 list of people, reference letter with system turn
    [
        ("system", "You are a concise writing assistant."),
        ("user", "Write a reference for {name}. I'm {name2}, I was her manager for 4 years at the {city} office. Contact me at {email} or {phone} if they want to check."),
        ("assistant", "To whom it may concern,\n\nI am pleased to recommend {name}, who worked under my supervision for four years at our {city} office. {first} was reliable, well organised and consistently went beyond what was asked of her. Colleagues valued her calm approach, and clients often asked for her by name.\n\nI am happy to provide further details. Please contact me at {email} or {phone}.\n\nSincerely,\n{name2}"),
        ("user", "Great. Can you make one for {first3} too, same team, but shorter"),
        ("assistant", "To whom it may concern,\n\n{first3} was a valued member of my team at the {city} office. I can recommend {first3} without reservation. For further information, please contact me at {email}.\n\nSincerely,\n{name2}"),
    ],
    # 24 password mentioned without label, mixed german/english, id
    [
        ("user", "ich hab vergessen wie ich mich bei der Steuer-App anmelde. ich glaub ich hab damals {password} genommen, kann das sein dass die Großbuchstaben verlangen? meine {id_kind} ist {id} falls das wichtig ist"),
        ("assistant", "Die genauen Passwortregeln hängen von der App ab, aber viele verlangen mindestens einen Großbuchstaben, eine Zahl und ein Sonderzeichen. Wenn \"{password}\" nicht funktioniert, nutze am besten \"Passwort vergessen\".\n\nDeine {id_kind} ({id}) brauchst du meistens nur zur Registrierung oder Identifizierung, nicht für die Anmeldung selbst. Teile sie am besten nicht unnötig im Chat."),
        ("user", "ok danke. und mein Mann {name2} hat denselben account? geht das?"),
        ("assistant", "In der Regel braucht jede Person ein eigenes Konto. {first2} sollte sich also selbst registrieren, auch wenn ihr gemeinsam veranlagt werdet."),
    ],
]
HELD_OUT_8_TEMPLATES: list[list[tuple[str, str]]] = [
    # 1 landlord letter, casual lowercase, address in sentence
    [
        ("user", "hey can u help me write a letter to my landlord? the heating at {street} has been broken for 2 weeks. my name is {name_lower} and he's called {name2}"),
        ("assistant", "Of course. Here's a draft:\n\n{name}\n{address_lines}\n\nDear {name2},\n\nI am writing to let you know that the heating at {street} has not worked for two weeks. Please arrange a repair as soon as possible.\n\nKind regards,\n{name}"),
        ("user", "perfect thx. can u add my number too, its {phone}"),
        ("assistant", "Sure, just add this under your name at the end:\n\n{name}\nTel: {phone}"),
    ],
    # 2 German, IBAN and Vertragskündigung
    [
        ("user", "Hallo, ich möchte mein Fitnessstudio kündigen. Kannst du mir ein Schreiben aufsetzen? Ich heiße {name}, wohne in der {street} in {post} {city}. Die Abbuchung läuft über mein Konto {iban}."),
        ("assistant", "Gerne! Hier ist ein Entwurf:\n\n{name}\n{street}\n{post} {city}\n\nBetreff: Kündigung meiner Mitgliedschaft\n\nSehr geehrte Damen und Herren,\n\nhiermit kündige ich meine Mitgliedschaft fristgerecht zum nächstmöglichen Zeitpunkt. Bitte stellen Sie die Lastschrift von meinem Konto (IBAN {iban}) ein und bestätigen Sie mir die Kündigung schriftlich.\n\nMit freundlichen Grüßen\n{name}"),
        ("user", "Danke! Soll ich noch meine Mitgliedsnummer angeben? Weiß ich nicht, aber meine E-Mail ist {email}"),
        ("assistant", "Das ist sinnvoll, falls vorhanden. Ohne Nummer reicht meist Name und Adresse. Sie können ergänzen: „Bitte senden Sie die Bestätigung an {email}.“"),
    ],
    # 3 Python code with dict of customer
    [
        ("user", "why does this throw KeyError?\n\n```python\ncustomer = {{\n    \"name\": \"{name}\",\n    \"email\": \"{email}\",\n    \"phone\": \"{phone}\",\n}}\nprint(customer[\"Email\"])\n```"),
        ("assistant", "Dictionary keys are case-sensitive. Your dict has the key `\"email\"` (lower case), but you access `\"Email\"`. Use:\n\n```python\nprint(customer[\"email\"])  # -> {email}\n```\n\nOr use `customer.get(\"Email\")` if you want `None` instead of an exception."),
    ],
    # 4 SQL insert with card
    [
        ("user", "I'm seeding a test db and got a syntax error near 'VALUES':\n\nINSERT INTO payments (holder, card_no, billing_addr) VALUES\n('{name}', '{card}', '{address}')\n('{name2}', '{card}', '{address}');"),
        ("assistant", "You're missing a comma between the two row tuples. It should be:\n\n```sql\nINSERT INTO payments (holder, card_no, billing_addr) VALUES\n  ('{name}', '{card}', '{address}'),\n  ('{name2}', '{card}', '{address}');\n```\n\nAlso, a side note: avoid using real card numbers like {card} in test data; use your provider's test numbers instead."),
    ],
    # 5 French, possessive name + phone dictated
    [
        ("user", "bonjour, je dois envoyer un message à la maîtresse de ma fille. elle s'appelle {name2}. Je veux lui dire que {first3} sera absente vendredi. mon numero c'est le {phone} si besoin"),
        ("assistant", "Voici une proposition :\n\nBonjour Madame,\n\nJe vous informe que ma fille {first3} sera absente ce vendredi pour raison familiale. N'hésitez pas à me joindre au {phone} si nécessaire.\n\nCordialement,\n{name}"),
        ("user", "parfait merci, change juste la signature en \"maman de {first3}\""),
        ("assistant", "Bien sûr :\n\n…N'hésitez pas à me joindre au {phone} si nécessaire.\n\nCordialement,\nMaman de {first3}"),
    ],
    # 6 password phrasing without "password:"
    [
        ("user", "my wifi keeps dropping. router admin is at 192.168.0.1, i log in with admin and {password} (never changed it lol). what settings should i check?"),
        ("assistant", "First, please change that admin login: leaving it as {password} means anyone on your network could reconfigure the router. Then check:\n\n1. Wireless channel: switch from Auto to 1, 6 or 11 (2.4 GHz) or a fixed 5 GHz channel.\n2. Firmware: update to the latest version.\n3. Band steering: try disabling it.\n4. DHCP lease time: make sure it isn't set very short."),
        ("user", "ok changed it. new one is the old one with a 2 on the end so {password}2 haha"),
        ("assistant", "That's better than the default, but appending a digit to an old one is easy to guess. A random passphrase from a password manager would be much safer."),
    ],
    # 7 Slack-like export, forwarded message with signature
    [
        ("user", "can you summarize this thread for me?\n\n---------- Forwarded message ---------\nFrom: {name} <{email}>\nDate: Tue, 4 Mar\nSubject: Re: delivery for {city} office\n\nHi {first2},\n\nthe pallets will go to {address}. Ask for me at the reception, or call {phone}.\n\nBest,\n{first}\n\n--\n{name}\nLogistics Coordinator\nM: {phone}\n{email}"),
        ("assistant", "Summary: {name} is telling {first2} that the pallets for the {city} office will be delivered to {address}. On arrival, ask for {first} at reception or call {phone}."),
    ],
    # 8 Spanish, id and address for a form
    [
        ("user", "Hola! Tengo que rellenar un formulario de empadronamiento. Mis datos: {name}, {id_kind} {id}, domicilio {address}. ¿Me ayudas a redactar la solicitud?"),
        ("assistant", "¡Claro! Aquí tienes un borrador:\n\nD./Dña. {name}, con {id_kind} {id}, y domicilio en {address},\n\nSOLICITA:\nSer inscrito/a en el Padrón Municipal de Habitantes de {city} en el domicilio indicado.\n\nEn {city}, a ___ de ______ de 20__.\n\nFirma: {name}"),
    ],
    # 9 CSV list of people
    [
        ("user", "convert this to a markdown table pls\n\nname,email,phone\n{name},{email},{phone}\n{name2},{email},{phone}\n{first3} {surname},{email},{phone}"),
        ("assistant", "| Name | Email | Phone |\n|---|---|---|\n| {name} | {email} | {phone} |\n| {name2} | {email} | {phone} |\n| {first3} {surname} | {email} | {phone} |"),
    ],
    # 10 Italian, bank transfer, IBAN
    [
        ("user", "ciao, devo mandare un bonifico a mio cugino {name2} ma la banca mi chiede la causale. l'iban che mi ha dato è {iban}. cosa scrivo?"),
        ("assistant", "Per un bonifico tra familiari puoi usare una causale semplice, ad esempio:\n\n\"Rimborso spese – {name}\"\n\nControlla bene l'IBAN prima di confermare: {iban}, intestato a {name2}."),
        ("user", "ok grazie. ah, {first2} dice che il conto è cointestato con la moglie, va bene lo stesso?"),
        ("assistant", "Sì, va bene: basta che {name2} sia uno degli intestatari del conto."),
    ],
    # 11 YAML config with password & email
    [
        ("user", "my docker-compose won't start postgres, here's the file:\n\n```yaml\nservices:\n  db:\n    image: postgres:16\n    environment:\n      POSTGRES_USER: {first_lower}\n      POSTGRES_PASSWORD: {password}\n      PGADMIN_DEFAULT_EMAIL: {email}\n    ports:\n      - 5432:5432\n```\nerror says 'database files are incompatible with server'"),
        ("assistant", "That error means the volume contains data from an older Postgres major version. Either pin the old version (e.g. `postgres:14`) or dump and restore. Also, `PGADMIN_DEFAULT_EMAIL` belongs to the pgadmin service, not postgres. And I'd move `{password}` out of the compose file into an `.env` file:\n\n```yaml\n      POSTGRES_USER: ${{POSTGRES_USER}}\n      POSTGRES_PASSWORD: ${{POSTGRES_PASSWORD}}\n```"),
    ],
    # 12 Polish, card blocked
    [
        ("user", "Cześć, zgubiłem kartę. Numer to {card}. Jak ją zablokować? Mam konto w banku, telefon podany w banku to {phone}."),
        ("assistant", "Najszybciej: zadzwoń na infolinię swojego banku lub zablokuj kartę w aplikacji mobilnej (zwykle w zakładce Karty → Zastrzeż). Przygotuj numer karty ({card}) i zadzwoń z numeru {phone}, żeby łatwiej było potwierdzić tożsamość. Możesz też użyć numeru zastrzegania kart +48 828 828 828."),
        ("user", "dzieki, zablokowane. a jak zamowic nowa na adres {address}?"),
        ("assistant", "W aplikacji wybierz „Zamów nową kartę” i sprawdź, czy adres korespondencyjny to {address}. Jeśli nie, zaktualizuj go przed zamówieniem."),
    ],
    # 13 system turn, customer support bot
    [
        ("system", "You are a helpful support assistant for an online shop. Be concise."),
        ("user", "Order hasn't arrived. It was supposed to go to {address_qq}. Ordered under {name}, {email}."),
        ("assistant", "Sorry about that, {first}. I've noted the delivery address as:\n\n{address_lines}\n\nCould you confirm the order number? I'll then check the tracking and contact the carrier."),
    ],
    # 14 Dutch, typos, name after punctuation
    [
        ("user", "hoi!{name} hier. kun je een mailtje schrijven naar mijn buurman,{name2}, dat zijn boom over onze schutting hangt? ik woon op {street} in {city}"),
        ("assistant", "Natuurlijk! Hier een voorstel:\n\nBeste {first2},\n\nIk wilde even laten weten dat de takken van je boom over onze schutting hangen. Zou je die binnenkort willen snoeien? Als je wilt, kunnen we er samen even naar kijken.\n\nGroetjes,\n{first}\n{street}, {city}"),
    ],
    # 15 JSON API payload with iban and id
    [
        ("user", "the payout API returns 422. payload:\n\n{{\"beneficiary\": {{\"full_name\": \"{name}\", \"iban\": \"{iban}\", \"document\": {{\"type\": \"{id_kind}\", \"number\": \"{id}\"}}}}, \"amount\": 120.5}}"),
        ("assistant", "A 422 usually means validation failed. Common causes here:\n\n- `iban` must often be sent without spaces: check that `{iban}` has none.\n- `document.type` is usually an enum (e.g. `PASSPORT`, `TAX_ID`), not free text like `\"{id_kind}\"`.\n\nTry:\n\n```json\n{{\n  \"beneficiary\": {{\n    \"full_name\": \"{name}\",\n    \"iban\": \"{iban}\",\n    \"document\": {{\"type\": \"TAX_ID\", \"number\": \"{id}\"}}\n  }},\n  \"amount\": 120.5\n}}\n```"),
    ],
    # 16 Portuguese, reference letter
    [
        ("user", "oi, preciso de uma carta de recomendação para a {name2}, que trabalhou comigo 3 anos. sou {name}, gerente. meu email {email} e telefone {phone}"),
        ("assistant", "Claro! Segue uma sugestão:\n\nA quem possa interessar,\n\nRecomendo {name2}, com quem trabalhei durante três anos. {first2} sempre demonstrou responsabilidade, iniciativa e excelente relacionamento com a equipe.\n\nFico à disposição para mais informações pelo e-mail {email} ou pelo telefone {phone}.\n\nAtenciosamente,\n{name}\nGerente"),
    ],
    # 17 phone dictated in words-and-digits, voice transcript cleanup
    [
        ("user", "clean up this voicemail transcript: \"hi it's {first} um calling about the flat, you can reach me on uh {phone}, that's {phone} again, and my email is {email}, thanks bye\""),
        ("assistant", "Hi, it's {first}, calling about the flat. You can reach me on {phone} or by email at {email}. Thanks, bye."),
    ],
    # 18 Czech, address and id for parcel
    [
        ("user", "Ahoj, potřebuju napsat reklamaci na poškozený balík. Jmenuju se {name}, adresa {address}, číslo zásilky nevím, ale platil jsem kartou {card}."),
        ("assistant", "Jasně, tady je návrh:\n\nDobrý den,\n\nobdržel jsem poškozenou zásilku na adresu {address}. Objednávku jsem zaplatil kartou končící na čísle uvedeném v příloze. Žádám o výměnu zboží nebo vrácení peněz.\n\nS pozdravem\n{name}\n\nTip: číslo celé karty ({card}) do e-mailu raději nepište, stačí poslední čtyři číslice."),
    ],
    # 19 shell script with email/password env
    [
        ("user", "bash says 'unexpected EOF while looking for matching quote':\n\n#!/bin/bash\nexport SMTP_USER=\"{email}\nexport SMTP_PASS='{password}'\n./send_report.sh --to {email}"),
        ("assistant", "The first `export` line is missing its closing double quote. Fix:\n\n```bash\n#!/bin/bash\nexport SMTP_USER=\"{email}\"\nexport SMTP_PASS='{password}'\n./send_report.sh --to \"{email}\"\n```\n\nIf the secret contains a single quote, the single-quoted form will break too; consider reading it from a file instead."),
    ],
    # 20 Hungarian, possessive, birthday invite
    [
        ("user", "Szia! Segítenél meghívót írni {first2} születésnapjára? A buli nálunk lesz: {address}. Aki nem talál oda, hívjon a {phone} számon. Én {name} vagyok."),
        ("assistant", "Persze! Íme egy javaslat:\n\nSzeretettel meghívunk {first2} születésnapi bulijára!\n\nHelyszín: {address}\nHa eltévednél, hívj bátran: {phone}\n\nVárunk szeretettel,\n{name}"),
        ("user", "szuper, és írd bele hogy {first3} hozza a tortát"),
        ("assistant", "Helyszín: {address}\nHa eltévednél, hívj bátran: {phone}\nA tortáról {first3} gondoskodik!\n\nVárunk szeretettel,\n{name}"),
    ],
    # 21 system, HR, list of employees in markdown
    [
        ("system", "You are an HR assistant. Format output as markdown."),
        ("user", "Make an onboarding checklist for our two new hires: {name} (starts Monday, laptop to be shipped to {address}) and {name2} (starts Wednesday, works from the {city} office). {surname}'s contract still needs the {id_kind}: {id}."),
        ("assistant", "## Onboarding checklist\n\n### {name} (Monday)\n- [ ] Ship laptop to {address}\n- [ ] Record {id_kind} {id} in the HR system\n- [ ] Send welcome email\n\n### {name2} (Wednesday)\n- [ ] Prepare desk in the {city} office\n- [ ] Create accounts\n- [ ] Send welcome email"),
    ],
    # 22 Danish, card subscription issue, mixed english
    [
        ("user", "Hej, jeg er blevet trukket to gange for mit abonnement. Kortet er {card}, og kontoen står i navnet {name}. Kan du skrive en klage på engelsk?"),
        ("assistant", "Selvfølgelig. Here's a complaint in English:\n\nDear Support Team,\n\nI have been charged twice this month for my subscription. The charges were made to the card {card}, registered to {name}. Please refund the duplicate payment.\n\nBest regards,\n{name}"),
        ("user", "tak! tilføj min mail {email}"),
        ("assistant", "Sure, add this line before the signature:\n\n\"You can reach me at {email}.\""),
    ],
    # 23 password in sentence, account recovery
    [
        ("user", "i forgot which one i used for my old hotmail ({email}). it's either {password} or the one with my dog's name. how do i recover it?"),
        ("assistant", "Go to account.live.com/password/reset, enter {email}, and choose a verification method (recovery phone or alternate email). If you no longer have access to either, fill in the account recovery form with as much detail as you can. After you're back in, please don't reuse {password} anywhere."),
        ("user", "recovery phone was {phone} but that's my old number"),
        ("assistant", "Then choose \"I don't have any of these\" and use the recovery form. Mention that {phone} was your old recovery number; that detail can help verify you."),
    ],
    # 24 system, name as subject, iban + id in invoice markdown
    [
        ("system", "You help freelancers write invoices."),
        ("user", "{name} did 12 hours of design work for us at 60 EUR/h. make an invoice from me, {name2}, {address}. payment to {iban}. my {id_kind} is {id}"),
        ("assistant", "**INVOICE**\n\nFrom: {name2}\n{address}\n{id_kind}: {id}\n\nBill to: {name}\n\n| Description | Hours | Rate | Amount |\n|---|---|---|---|\n| Design work | 12 | 60 EUR | 720 EUR |\n\n**Total due: 720 EUR**\n\nPlease transfer to IBAN {iban} within 14 days."),
        ("user", "wait it's the other way around, {first} is sending the invoice to me"),
        ("assistant", "Got it, swapped:\n\nFrom: {name}\n\nBill to: {name2}\n{address}\n\nPlease transfer to IBAN {iban} within 14 days. (I've removed the {id_kind} line, as {id} is yours, not {first}'s.)"),
    ],
]
HELD_OUT_9_TEMPLATES: list[list[tuple[str, str]]] = [
    # 1 casual landlord letter
    [
        ("user", "can u help me write a short note to my landlord, the boiler is broken again for the 3rd time this month. im {name}, flat is at {address}. he can reach me on {phone} anytime after 5"),
        ("assistant", "Of course. Here's a short, polite but firm note:\n\nDear landlord,\n\nI'm writing to let you know that the boiler at {address} has stopped working again, which is the third time this month. Could you please arrange a repair as soon as possible?\n\nI'm available after 5pm on {phone} to arrange access.\n\nKind regards,\n{name}"),
        ("user", "perfect thx, maybe sign with just {first}? we're on first name terms lol"),
        ("assistant", "Sure, just swap the last line for:\n\nThanks,\n{first}"),
    ],
    # 2 German gym cancellation
    [
        ("user", "Hallo, ich möchte meinen Fitnessstudio-Vertrag kündigen. Kannst du mir ein Kündigungsschreiben aufsetzen? Mein Name ist {name}, Adresse:\n{address_lines}\nDie Beiträge werden von meinem Konto {iban} abgebucht, Mitgliedsnummer {id}."),
        ("assistant", "Gerne! Hier ist ein Entwurf:\n\n{name}\n{address_lines}\n\nBetreff: Kündigung meiner Mitgliedschaft (Mitgliedsnr. {id})\n\nSehr geehrte Damen und Herren,\n\nhiermit kündige ich meine Mitgliedschaft fristgerecht zum nächstmöglichen Zeitpunkt. Bitte bestätigen Sie mir die Kündigung schriftlich und stellen Sie die Lastschriften von meinem Konto {iban} nach Vertragsende ein.\n\nMit freundlichen Grüßen\n{name}"),
        ("user", "Danke! Muss ich das per Einschreiben schicken?"),
        ("assistant", "Es ist nicht zwingend vorgeschrieben, aber ein Einschreiben mit Rückschein ist sehr empfehlenswert, damit du den Zugang der Kündigung nachweisen kannst."),
    ],
    # 3 Python code with users dict
    [
        ("user", "why does this throw KeyError?\n\n```python\nusers = {{\n    \"{email}\": {{\"name\": \"{name}\", \"phone\": \"{phone}\", \"pw\": \"{password}\"}},\n}}\n\ndef login(email, pw):\n    u = users[email.lower()]\n    return u[\"password\"] == pw\n\nprint(login(\"{email}\", \"{password}\"))\n```"),
        ("assistant", "The dictionary stores the secret under the key `\"pw\"`, but `login` reads `u[\"password\"]`. Either rename the key or change the lookup:\n\n```python\ndef login(email, pw):\n    u = users.get(email.lower())\n    if u is None:\n        return False\n    return u[\"pw\"] == pw\n```\n\nAlso note that `email.lower()` will only match if the key itself is lower-case. And please don't keep real credentials like `{password}` for {name} in plain text in source code; store a hash (e.g. with `bcrypt`) instead."),
    ],
    # 4 SQL insert
    [
        ("user", "postgres is complaining about this insert, what's wrong\n\nINSERT INTO customers (full_name, email, card_number, city)\nVALUES ('{name_lower}', '{email}', '{card}', '{city}'\n"),
        ("assistant", "You're missing the closing parenthesis and the semicolon at the end:\n\n```sql\nINSERT INTO customers (full_name, email, card_number, city)\nVALUES ('{name_lower}', '{email}', '{card}', '{city}');\n```\n\nSide note: storing raw card numbers like `{card}` in your own table puts you in PCI DSS scope. Usually you'd store a token from your payment provider and maybe the last four digits."),
        ("user", "ok its just a test db. also how do i capitalize the name properly, it came in as {name_lower}"),
        ("assistant", "You can use `initcap`:\n\n```sql\nUPDATE customers SET full_name = initcap(full_name) WHERE email = '{email}';\n```\n\nThat turns '{name_lower}' into '{name}'. Be aware it can get names with particles or apostrophes wrong."),
    ],
    # 5 French lost card
    [
        ("user", "Bonjour, j'ai perdu ma carte bancaire hier soir. Pouvez-vous m'aider à rédiger un mail à ma banque ? Le numéro c'est {card}, je m'appelle {name} et mon portable est le {phone}."),
        ("assistant", "Bonjour, voici une proposition :\n\nObjet : Perte de ma carte bancaire – demande d'opposition\n\nMadame, Monsieur,\n\nJe vous informe de la perte de ma carte bancaire n° {card} survenue hier soir. Je vous remercie de bien vouloir confirmer la mise en opposition et de m'envoyer une nouvelle carte.\n\nVous pouvez me joindre au {phone}.\n\nCordialement,\n{name}\n\nAttention : pour bloquer la carte immédiatement, il vaut mieux appeler le service d'opposition par téléphone plutôt que d'attendre une réponse par mail."),
    ],
    # 6 Spanish CV header
    [
        ("user", "hola! estoy haciendo mi CV y no sé cómo poner la cabecera. datos: {name}, vivo en {street}, {city} ({post}), correo {email}, tel {phone}"),
        ("assistant", "¡Claro! Una cabecera limpia podría ser así:\n\n**{name}**\n{street} · {post} {city}\n{email} · {phone}\n\nConsejo: en muchos países ya no es necesario poner la dirección completa; basta con la ciudad ({city}) para proteger un poco tu privacidad."),
        ("user", "vale pues quito la calle. gracias!!"),
        ("assistant", "Perfecto, entonces quedaría:\n\n**{name}**\n{city} · {email} · {phone}"),
    ],
    # 7 Slack-like forwarded message
    [
        ("user", "---------- Forwarded message ---------\nFrom: {name} <{email}>\nDate: Tue, 4 Mar 2025 at 09:12\nSubject: refund\nTo: support\n\nHi, I was charged twice for order 4471. Please refund to {iban}, account holder {name}.\n\nThanks\n{first}\n\n---\n\n@assistant can you draft a reply for me? I'm {name2} from support"),
        ("assistant", "Here's a draft:\n\nHi {first},\n\nThanks for reaching out, and sorry about the double charge on order 4471. I've checked and can confirm the duplicate payment. We'll refund it to the account ending in the IBAN you provided ({iban}) within 5–7 business days.\n\nIf you have any questions, just reply to this email.\n\nBest regards,\n{name2}\nCustomer Support"),
        ("user", "nice, maybe dont repeat the whole iban, just last 4"),
        ("assistant", "Good call. Replace that sentence with: \"We'll refund it to your account on file (IBAN ending in the last four digits you provided) within 5–7 business days.\" And sign off as {first2} if you prefer a friendlier tone."),
    ],
    # 8 YAML config
    [
        ("user", "my docker-compose won't connect to the db. here's the relevant bit\n\n```yaml\nservices:\n  app:\n    environment:\n      DB_USER: admin\n      DB_PASS: {password}\n      ADMIN_EMAIL: {email}\n  db:\n    image: postgres:16\n    environment:\n      POSTGRES_PASSWORD: \"{password}\"\n```"),
        ("assistant", "Your `db` service never sets `POSTGRES_USER`, so Postgres creates the default user `postgres`, while the app tries to log in as `admin`. Add it:\n\n```yaml\n  db:\n    image: postgres:16\n    environment:\n      POSTGRES_USER: admin\n      POSTGRES_PASSWORD: \"{password}\"\n```\n\nAlso quote the value in the app section too; if `{password}` contains characters like `#` or `:` YAML may mangle it. Better yet, move it into an `.env` file that isn't committed."),
        ("user", "ah yeah. the pass is the same one i use for my mail at {email} lol, should i change it"),
        ("assistant", "Yes, definitely. Reusing the password of your email account for a database config is risky: anyone who sees the compose file could get into your mailbox. Generate a unique random one for the database and change your email password as well."),
    ],
    # 9 CSV list of people
    [
        ("user", "turn this into a markdown table pls\n\nname,email,phone,city\n{name},{email},{phone},{city}\n{name2},,,{country}\n{first3},,n/a,{city}"),
        ("assistant", "| Name | Email | Phone | City |\n|---|---|---|---|\n| {name} | {email} | {phone} | {city} |\n| {name2} | | | {country} |\n| {first3} | | n/a | {city} |\n\nNote: for {name2} the value you gave ({country}) looks like a country rather than a city, so you might want to double-check that row."),
    ],
    # 10 Polish application
    [
        ("user", "Cześć, muszę wypełnić wniosek o kartę parkingową i nie rozumiem rubryki 'dane wnioskodawcy'. Ja to {name}, mieszkam przy {street}, {post} {city}. Mam podać {id_kind}? U mnie to {id}."),
        ("assistant", "Cześć! W rubryce „dane wnioskodawcy” zwykle wpisujesz:\n\n- Imię i nazwisko: {name}\n- Adres zamieszkania: {street}, {post} {city}\n- Numer dokumentu: {id} ({id_kind})\n\nJeśli formularz wymaga konkretnie numeru PESEL, a nie innego dokumentu, to wpisz PESEL. Warto sprawdzić instrukcję na odwrocie wniosku."),
        ("user", "a jak podpisać? pełnym imieniem?"),
        ("assistant", "Tak, najlepiej czytelnym podpisem: {name}. Samo „{first}” albo parafka może zostać odrzucone."),
    ],
    # 11 Dutch rental with address_qq
    [
        ("user", "Ik heb dit uit ons verhuurprogramma gekopieerd maar de regels zijn weg:\n\nHuurder: {name}???{address_qq}???Rekening: {iban}\n\nKun je er een nette adresregel van maken voor de huurovereenkomst?"),
        ("assistant", "Natuurlijk. Zo ziet het er netjes uit:\n\nHuurder: {name}\nAdres:\n{address_lines}\nIBAN: {iban}\n\nDe drie vraagtekens staan waarschijnlijk voor regeleinden die bij het exporteren verloren zijn gegaan."),
        ("user", "top. en de borg wordt ook op {iban} teruggestort toch?"),
        ("assistant", "Dat hangt af van wat jullie afspreken, maar gebruikelijk is dat de borg teruggaat naar het rekeningnummer van de huurder, dus {iban} op naam van {surname}. Zet dat er expliciet in, bijvoorbeeld: \"De waarborgsom wordt na afloop teruggestort op rekening {iban} t.n.v. {name}.\""),
    ],
    # 12 Italian
    [
        ("user", "ciao, devo scrivere una mail al comune per il cambio di residenza. mi chiamo {first} {surname}, la nuova via è {street} a {city}. il mio {id_kind} è {id}, serve?"),
        ("assistant", "Ciao {first}! Ecco una bozza:\n\nOggetto: Richiesta di cambio di residenza\n\nGentile Ufficio Anagrafe,\n\nil/la sottoscritto/a {name} comunica il trasferimento della propria residenza al nuovo indirizzo: {street}, {post} {city}.\n\nAllego copia del documento d'identità ({id_kind}: {id}).\n\nCordiali saluti,\n{name}\n\nDi solito il comune chiede il codice fiscale e una copia del documento, quindi sì, è utile indicarlo."),
    ],
    # 13 markdown table guests with possessives
    [
        ("user", "planning a dinner for saturday. {first}'s bringing dessert, {name2} is vegan and {first3} can't do nuts. can u make a little table with who brings what? my number for the group chat is {phone}"),
        ("assistant", "Here you go:\n\n| Guest | Brings | Dietary notes |\n|---|---|---|\n| {first} | Dessert | – |\n| {name2} | ? | Vegan |\n| {first3} | ? | Nut allergy |\n\nYou could paste this into the group chat and ask people to fill in the gaps. Want me to draft the message, including your number ({phone}) for anyone who isn't in the chat yet?"),
        ("user", "yes pls, and mention dinner is at mine, {address}"),
        ("assistant", "Hi all! Dinner is on Saturday at 7pm at {address}. {first} is on dessert 🍰. {first2}, I'll make sure there's a proper vegan main for you, and {first3}, everything will be nut-free. Let me know what else you can bring! Questions? Text me on {phone}."),
    ],
    # 14 Portuguese account recovery
    [
        ("user", "oi, não consigo entrar no meu email {email}. a senha que eu sempre usei era {password} mas agora diz que tá errada. o número de recuperação é {phone}"),
        ("assistant", "Oi! Algumas coisas que podem ajudar:\n\n1. Use a opção \"Esqueci minha senha\" na página de login e escolha receber o código no celular {phone}.\n2. Verifique se o Caps Lock está desligado: \"{password}\" diferencia maiúsculas de minúsculas.\n3. Se alguém trocou a senha, entre em contato com o suporte do provedor.\n\nE um conselho: depois de recuperar o acesso, escolha uma senha nova que você não use em nenhum outro lugar, e evite compartilhar a senha em chats como este."),
        ("user", "ok valeu, vou trocar"),
    ],
    # 15 Czech complaint
    [
        ("user", "Dobrý den, potřebuju napsat reklamaci na pračku. Jmenuju se {name}, bydlím na adrese {address} a telefon mám {phone}. Pračka teče už po dvou týdnech."),
        ("assistant", "Dobrý den, tady je návrh reklamace:\n\nVěc: Reklamace pračky\n\nVážení,\n\ndne 3. 2. jsem u vás zakoupil/a pračku, která po dvou týdnech používání začala téct. Žádám o bezplatnou opravu, případně výměnu v rámci zákonné záruky.\n\nKontakt: {name}, {address}, tel. {phone}\n\nS pozdravem\n{name}"),
        ("user", "super, a můžeš tam dát i e-mail {email}?"),
        ("assistant", "Jasně, kontaktní řádek by pak byl: {name}, {address}, tel. {phone}, e-mail: {email}"),
    ],
    # 16 Hungarian
    [
        ("user", "Szia! Segítenél egy hivatalos e-mailt írni a könyvelőmnek? {name} vagyok, a visszatérítést erre a számlára kérem: {iban}. Az adóazonosítóm ({id_kind}) {id}."),
        ("assistant", "Szia! Íme egy javaslat:\n\nTárgy: Visszatérítés bankszámlaszáma\n\nKedves Könyvelő Úr/Asszony!\n\nKérem, hogy a visszatérítést az alábbi számlára utalják: {iban}.\nAzonosítóm ({id_kind}): {id}.\n\nKöszönettel:\n{name}"),
        ("user", "köszi! ja és a könyvelő neve {name2}, tegeződünk"),
        ("assistant", "Akkor legyen közvetlenebb:\n\nKedves {first2}!\n\nA visszatérítést légyszi a {iban} számlára utaljátok. Az azonosítóm: {id}.\n\nKöszi,\n{first}"),
    ],
    # 17 Danish with card
    [
        ("user", "hej, jeg skal sende en klage til et webshop der har trukket penge to gange på mit kort ({card}). kan du hjælpe? jeg hedder {name}\n{address_lines}"),
        ("assistant", "Hej {first}! Her er et udkast:\n\nEmne: Dobbelt træk på betalingskort\n\nHej,\n\nJeg har opdaget, at I har trukket det samme beløb to gange på mit betalingskort, der slutter på de sidste fire cifre af {card}. Jeg beder jer venligst refundere det ene beløb hurtigst muligt.\n\nVenlig hilsen\n{name}\n{address_lines}\n\nTip: skriv helst ikke hele kortnummeret i mailen, kun de sidste fire cifre."),
    ],
    # 18 system + email signature
    [
        ("system", "You are a helpful assistant."),
        ("user", "Can you make my email signature look more professional? Currently it's:\n\ncheers, {first_lower}\n{name} | {phone} | {email}\n{address}"),
        ("assistant", "Here's a cleaner version:\n\nBest regards,\n\n{name}\nSenior Account Manager\nT: {phone}\nE: {email}\nA: {address}\n\nYou can drop the job title line if it doesn't apply, and consider leaving out the full street address unless clients need to send you post."),
        ("user", "i'm not a senior account manager haha, i'm a freelance translator"),
        ("assistant", "Ha, my mistake! Then:\n\nBest regards,\n\n{name}\nFreelance Translator\nT: {phone} · E: {email}"),
    ],
    # 19 dictated numbers
    [
        ("user", "ok so the hotel asked me to confirm booking by email and i have to give them my card. it's a visa, the long number is {card}, expiry 08/27. also phone, plus then {phone}, and they want a passphrase for the reservation so i picked {password}. can you write it up"),
        ("assistant", "Here's a draft, but first a strong word of caution: hotels normally never need your full card number by plain email. Consider calling them instead or using their secure payment link.\n\nIf you still want to write:\n\nDear Reservations Team,\n\nI'd like to confirm my booking. You can reach me on {phone}. The passphrase for the reservation is {password}.\n\nFor the payment details, I'll call you directly.\n\nKind regards"),
        ("user", "hmm fair. sign it as {name} then"),
        ("assistant", "Done:\n\nDear Reservations Team,\n\nI'd like to confirm my booking. You can reach me on {phone}. The passphrase for the reservation is {password}.\n\nFor the payment details, I'll call you directly.\n\nKind regards,\n{name}"),
    ],
    # 20 JSON payload
    [
        ("user", "the API returns 422 for this body, any idea?\n\n{{\n  \"customer\": {{\n    \"name\": \"{name}\",\n    \"email\": \"{email}\",\n    \"address\": \"{street}, {city}\",\n    \"postcode\": {post},\n  }},\n  \"payment\": {{ \"card\": \"{card}\" }}\n}}"),
        ("assistant", "Two problems jump out:\n\n1. There's a trailing comma after `\"postcode\"`, which is invalid JSON.\n2. `postcode` isn't quoted. Postcodes should be strings (many contain letters or leading zeros).\n\nFixed:\n\n```json\n{{\n  \"customer\": {{\n    \"name\": \"{name}\",\n    \"email\": \"{email}\",\n    \"address\": \"{street}, {city}\",\n    \"postcode\": \"{post}\"\n  }},\n  \"payment\": {{ \"card\": \"{card}\" }}\n}}\n```"),
    ],
    # 21 shell curl with creds
    [
        ("user", "running this from my laptop and get 401\n\n```\ncurl -u {email}:{password} https://api.example.com/v1/me\n```\nthe login works fine on the website"),
        ("assistant", "A few common causes:\n\n- If the password `{password}` contains shell-special characters (`$`, `!`, `&`), the shell may be interpreting them. Wrap the credentials in single quotes:\n\n```bash\ncurl -u '{email}:{password}' https://api.example.com/v1/me\n```\n\n- Many APIs don't accept your website login at all and require an API token instead.\n\nAlso, since you've now shared these credentials here, I'd recommend changing that password."),
        ("user", "yep it was the ! in it. thanks. my colleague {name2} has the same issue i'll tell him"),
    ],
    # 22 names as sentence subjects, after punctuation
    [
        ("user", "write a quick reference for my former intern, keep it short. her name is {name}. she worked with us 6 months;{first} was great with clients. contact me at {email} if they need more."),
        ("assistant", "To whom it may concern,\n\n{name} worked with our team as an intern for six months. During that time, {first} consistently impressed us with her professionalism and her excellent way with clients. {first}'s ability to handle difficult conversations calmly was especially valuable.\n\nI recommend her without reservation. Please feel free to contact me at {email} for further details.\n\nSincerely,"),
        ("user", "add my name: {name2}, team lead. and mention {surname} also helped onboard {first3}"),
        ("assistant", "Updated ending:\n\n...In addition, Ms. {surname} played a key role in onboarding our newest team member, {first3}.\n\nI recommend her without reservation. Please feel free to contact me at {email} for further details.\n\nSincerely,\n{name2}\nTeam Lead"),
    ],
    # 23 lowercase typos
    [
        ("user", "hey its {name_lower} again. i moved, new adress is {address_lower}. do i need to tell the dvla or whatever, my {id_kind} is {id}"),
        ("assistant", "Welcome to the new place! Yes, if your {id_kind} ({id}) shows your address, you're usually legally required to update it when you move. In most countries you can do it online; you'll typically need the document number and your new address:\n\n{address}\n\nIt's generally free, and your new document will be posted to that address."),
        ("user", "ok cool. and my bank, they have my old email too, new one is {email}"),
        ("assistant", "For the bank, log into online banking and update both the postal address ({address}) and the email ({email}) in your profile settings. Some banks will ask you to confirm the change via a code sent to your phone."),
    ],
    # 24 Spanish/English mix with CRM export and phone shapes
    [
        ("system", "You are an assistant that helps clean up CRM data."),
        ("user", "Exported contact from our CRM, can you split it into fields?\n\n{name}???{address_qq}???tel: {phone}???{email}"),
        ("assistant", "Here it is split into fields:\n\n- Full name: {name}\n- First name: {first}\n- Surname: {surname}\n- Street: {street}\n- Postcode: {post}\n- City: {city}\n- Country: {country}\n- Phone: {phone}\n- Email: {email}\n\nThe \"???\" separators look like line breaks that got lost during export."),
        ("user", "gracias. y este otro? {name2} - misma empresa, mismo teléfono"),
        ("assistant", "Then the second record would be:\n\n- Full name: {name2}\n- First name: {first2}\n- Street: {street}\n- Postcode: {post}\n- City: {city}\n- Country: {country}\n- Phone: {phone}\n- Email: (not provided)"),
    ],
]
HELD_OUT_10_TEMPLATES: list[list[tuple[str, str]]] = [
    # 1 casual lower-case landlord letter
    [
        ("user", "hey can u help me write a letter to my landlord. im {name} and i live at {street}, {post} {city}. heating's been broken for like 2 weeks and nobody picks up when i call. my number is {phone} if that matters"),
        ("assistant", "Of course. Here's a firm but polite letter you can send:\n\n{name}\n{address_lines}\nPhone: {phone}\n\nDear Landlord,\n\nI am writing to report that the heating at {street} has not been working for approximately two weeks. I have tried to reach you by phone several times without success.\n\nPlease arrange a repair as soon as possible. You can reach me at {phone}.\n\nKind regards,\n{name}"),
        ("user", "thx. can u make it less formal, he's called {first2}"),
        ("assistant", "Sure:\n\nHi {first2},\n\nJust a quick note that the heating at my place ({street}) has been out for about two weeks now. I've tried calling a few times but couldn't get hold of you. Could you get someone round to fix it this week? Best number for me is {phone}.\n\nThanks,\n{first}"),
    ],
    # 2 German bank email with IBAN
    [
        ("user", "Kannst du mir helfen, eine kurze Mail an meine Bank zu formulieren? Die Rückbuchung von letzter Woche ist nicht angekommen. Konto läuft auf {name}, IBAN {iban}. Meine Mail ist {email}"),
        ("assistant", "Gerne, hier ein Vorschlag:\n\nBetreff: Fehlende Rückbuchung\n\nSehr geehrte Damen und Herren,\n\nleider ist die Rückbuchung aus der vergangenen Woche noch nicht auf meinem Konto eingegangen.\n\nKontoinhaber: {name}\nIBAN: {iban}\n\nIch bitte um kurze Prüfung und Rückmeldung an {email}.\n\nMit freundlichen Grüßen\n{name}"),
        ("user", "super danke. kannst du noch reinschreiben dass ich unter {phone} erreichbar bin, aber nur nachmittags"),
        ("assistant", "Klar, ergänze einfach vor der Grußformel:\n\n\"Telefonisch erreichen Sie mich nachmittags unter {phone}.\""),
    ],
    # 3 Python dict of users
    [
        ("user", "why does this throw KeyError?\n\n```python\nusers = {{\n    \"u1\": {{\"name\": \"{name}\", \"email\": \"{email}\", \"phone\": \"{phone}\"}},\n    \"u2\": {{\"name\": \"{name2}\", \"mail\": \"{first3}@example.org\"}},\n}}\n\nfor uid, u in users.items():\n    print(u[\"name\"], u[\"email\"])\n```"),
        ("assistant", "The second entry uses the key `\"mail\"` instead of `\"email\"`, so `u[\"email\"]` fails when the loop reaches `u2` ({name2}). Either rename the key or use `.get()`:\n\n```python\nfor uid, u in users.items():\n    print(u[\"name\"], u.get(\"email\") or u.get(\"mail\"))\n```\n\nThat prints `{name} {email}` for the first user and the fallback address for the second."),
    ],
    # 4 SQL insert with card
    [
        ("user", "getting 'value too long for type character varying(16)' on this insert, postgres:\n\nINSERT INTO customers (full_name, email, card_no, city)\nVALUES ('{name}', '{email}', '{card}', '{city}');"),
        ("assistant", "The `card_no` column is `varchar(16)`, but the value '{card}' probably includes spaces or dashes, which pushes it over 16 characters. Strip them before inserting:\n\n```sql\nINSERT INTO customers (full_name, email, card_no, city)\nVALUES ('{name}', '{email}', regexp_replace('{card}', '[^0-9]', '', 'g'), '{city}');\n```\n\nAlso, storing full card numbers in plain text is a PCI DSS problem; consider storing only a token or the last four digits."),
        ("user", "yeah its just a test db, ty"),
    ],
    # 5 French password / account recovery
    [
        ("user", "bonjour, je n'arrive plus à me connecter à mon compte. l'adresse c'est {email} et je suis presque sûre que le mot de passe était {password} mais ça marche pas. qu'est-ce que je peux faire ?"),
        ("assistant", "Bonjour ! Je ne peux pas accéder à votre compte, mais voici ce que vous pouvez essayer :\n\n1. Vérifiez que le verrouillage des majuscules est désactivé.\n2. Utilisez « Mot de passe oublié » avec l'adresse {email}.\n3. Une fois connectée, choisissez un nouveau mot de passe : évitez de réutiliser {password}, surtout maintenant qu'il a été partagé ici."),
        ("user", "ok merci. et si je n'ai plus accès à cette boîte mail ? le compte est au nom de {name}, j'ai aussi mon numéro {phone}"),
        ("assistant", "Dans ce cas, contactez le support du service et indiquez que le compte est au nom de {name}, avec le numéro {phone} associé. Ils vous demanderont probablement une pièce d'identité pour vérifier."),
    ],
    # 6 forwarded message summary
    [
        ("user", "can you summarise this and tell me what i need to do\n\n---------- Forwarded message ---------\nFrom: {name} <{email}>\nDate: Tue, 14 May\nSubject: Re: Booking confirmation\nTo: {name2}\n\nHi {first2},\n\nThanks for confirming. Please send the deposit to {iban} (account holder {name}) by Friday, reference \"FLAT-3B\". The keys can be picked up at {street}, {city}, any time after 4pm.\n\nIf anything comes up, call me on {phone}.\n\nBest,\n{first}"),
        ("assistant", "Summary: {name} confirmed your booking and needs the deposit.\n\nTo do:\n- Transfer the deposit to IBAN {iban} (holder: {name}) by Friday, reference \"FLAT-3B\".\n- Pick up the keys at {street}, {city} after 4pm.\n- If there's a problem, phone {first} on {phone}."),
    ],
    # 7 Spanish form with id
    [
        ("user", "Hola, tengo que rellenar un formulario de empadronamiento y no entiendo algunos campos. Te paso mis datos: {name}, {id_kind} {id}, vivo en {address}. Qué pongo en 'domicilio anterior'?"),
        ("assistant", "En «domicilio anterior» debes indicar la dirección donde estabas empadronado antes de {address}. Si es tu primer empadronamiento en España, déjalo en blanco o escribe el país de origen.\n\nEl resto quedaría así:\n- Nombre y apellidos: {name}\n- Documento ({id_kind}): {id}\n- Domicilio actual: {street}, {post} {city}"),
        ("user", "vale, antes vivía en {country}. gracias!!"),
        ("assistant", "Perfecto, entonces en «domicilio anterior» pon simplemente {country}. ¡Suerte con el trámite!"),
    ],
    # 8 email signature
    [
        ("user", "make my email signature look more professional pls:\n\n{name} | senior analyst | {phone} | {email} | {street}, {city}"),
        ("assistant", "Here's a cleaner version:\n\n--\n{name}\nSenior Analyst\nT: {phone}\nE: {email}\n{street}\n{post} {city}, {country}"),
        ("user", "nice. can u do one for my colleague too, {name2}, same office, {first2}'s email is {first3}.{surname}@company.com... no wait thats wrong, just leave email out"),
        ("assistant", "Sure, without the email:\n\n--\n{name2}\nSenior Analyst\n{street}\n{post} {city}, {country}"),
    ],
    # 9 YAML config with password (system turn)
    [
        ("system", "You are a helpful DevOps assistant."),
        ("user", "my docker compose won't start, says 'password authentication failed for user admin'\n\n```yaml\nservices:\n  db:\n    image: postgres:16\n    environment:\n      POSTGRES_USER: admin\n      POSTGRES_PASSWORD: {password}\n      POSTGRES_DB: shop\n  app:\n    environment:\n      DATABASE_URL: postgres://admin:{password}@db:5432/shop\n      ADMIN_EMAIL: {email}\n```"),
        ("assistant", "The credentials in both services match, so the usual cause is an existing volume: Postgres only applies `POSTGRES_PASSWORD` on the first initialisation. If the volume was created earlier with a different password, `{password}` is ignored.\n\nFix:\n\n```sh\ndocker compose down -v\ndocker compose up\n```\n\nAlso, if `{password}` contains `@`, `:` or `/`, it must be URL-encoded in `DATABASE_URL`. And you should move it to an `.env` file rather than committing it."),
    ],
    # 10 CSV to markdown table
    [
        ("user", "turn this into a markdown table\n\nname,email,phone,city\n{name},{email},{phone},{city}\n{name2},{first2}@mail.com,,{city}\n{first3} (intern),,,"),
        ("assistant", "| Name | Email | Phone | City |\n|---|---|---|---|\n| {name} | {email} | {phone} | {city} |\n| {name2} | {first2}@mail.com | | {city} |\n| {first3} (intern) | | | |"),
        ("user", "add a first name column, we use it for the mail merge"),
        ("assistant", "| First name | Name | Email | Phone | City |\n|---|---|---|---|---|\n| {first} | {name} | {email} | {phone} | {city} |\n| {first2} | {name2} | {first2}@mail.com | | {city} |\n| {first3} | {first3} (intern) | | | |"),
    ],
    # 11 Polish card blocked
    [
        ("user", "Bank zablokował mi kartę i nie wiem dlaczego. Numer karty {card}, właściciel {name}. Jak mam napisać reklamację?"),
        ("assistant", "Oto przykładowa treść reklamacji:\n\nSzanowni Państwo,\n\nzwracam się z prośbą o wyjaśnienie przyczyny zablokowania mojej karty płatniczej nr {card}. Właściciel karty: {name}.\n\nProszę o odblokowanie karty lub informację, jakie kroki muszę podjąć.\n\nZ poważaniem,\n{name}\n\nZanim wyślesz, rozważ podanie tylko ostatnich 4 cyfr karty zamiast pełnego numeru."),
        ("user", "dzięki, dopisz jeszcze adres {address} i tel {phone}"),
        ("assistant", "Jasne, pod podpisem dodaj:\n\n{name}\n{address}\ntel. {phone}"),
    ],
    # 12 Dutch rental contract, two people
    [
        ("user", "Wij gaan samen een huurcontract tekenen, {name} en {name2}. Het adres is {street} in {city}. Moeten we allebei op het contract staan?"),
        ("assistant", "Ja, het is verstandig dat jullie allebei als huurder op het contract staan. Dan zijn {first} en {first2} allebei hoofdelijk aansprakelijk, maar hebben ook allebei huurbescherming voor {street}, {post} {city}.\n\nControleer dat op het contract staat:\n- Huurders: {name} en {name2}\n- Adres: {address}"),
        ("user", "oké en de verhuurder vraagt om een kopie van mijn {id_kind}, nummer {id}. is dat normaal?"),
        ("assistant", "Een verhuurder mag je identiteit controleren, maar een kopie bewaren is vaak niet nodig. Als je toch een kopie geeft, maak dan de pasfoto en het BSN onleesbaar en zet er \"kopie voor huurcontract {street}\" op. Het nummer {id} hoeft verder nergens in het contract te staan."),
    ],
    # 13 Italian resignation letter
    [
        ("user", "ciao mi aiuti a scrivere una lettera di dimissioni? mi chiamo {name}, abito in {street}, {post} {city}. il mio responsabile è {name2}"),
        ("assistant", "Certo! Ecco una bozza:\n\n{name}\n{street}\n{post} {city}\n\nAll'attenzione di {name2}\n\nOggetto: Dimissioni volontarie\n\nGentile {first2},\n\ncon la presente comunico le mie dimissioni volontarie dalla posizione attualmente ricoperta, nel rispetto del periodo di preavviso previsto dal contratto.\n\nRingrazio per l'opportunità e per la collaborazione di questi anni.\n\nCordiali saluti,\n{name}"),
        ("user", "perfetto. ah la mando via pec da {email}, va bene lo stesso?"),
        ("assistant", "Sì, in Italia le dimissioni vanno comunque presentate online tramite il portale del Ministero del Lavoro, ma puoi anche inviare una copia a {first2} via PEC da {email} per conoscenza."),
    ],
    # 14 dictated numbers
    [
        ("user", "ok so im on the phone with the airline and they want my card, i read it out as {card} and then expiry oh-nine slash twenty-seven, they keep saying it's invalid. is there a way to check if the number is even right??"),
        ("assistant", "You can check it with the Luhn algorithm, which every card number must pass. Quick Python check:\n\n```python\ndef luhn_ok(num: str) -> bool:\n    digits = [int(c) for c in num if c.isdigit()]\n    total = 0\n    for i, d in enumerate(reversed(digits)):\n        if i % 2 == 1:\n            d *= 2\n            if d > 9:\n                d -= 9\n        total += d\n    return total % 10 == 0\n\nprint(luhn_ok(\"{card}\"))\n```\n\nIf it prints `True`, the number itself is fine and the problem is more likely the expiry date, the billing address, or the card being blocked for phone payments."),
        ("user", "prints true. billing address is {address_lower}, maybe they have the old one. also they want a callback number, mine is {phone} ext two one four"),
        ("assistant", "Then the billing address is the likely culprit. Ask them to confirm the address on file matches {address}. For the callback, give {phone}, extension 214."),
    ],
    # 15 Portuguese registration with id
    [
        ("user", "oi! to fazendo cadastro numa loja online e o site pede {id_kind}. o meu é {id}. é seguro colocar? meu email é {email} e celular {phone}"),
        ("assistant", "Em lojas brasileiras é comum pedirem esse documento para emissão de nota fiscal. Antes de informar {id}, confira:\n\n1. Se o site usa https (cadeado no navegador).\n2. Se a loja tem CNPJ e reputação no Reclame Aqui.\n3. Se a política de privacidade explica o uso dos dados.\n\nO email {email} e o celular {phone} normalmente servem só para confirmação do pedido."),
        ("user", "blz. e a senha, posso usar a mesma do banco? é {password}"),
        ("assistant", "Não é recomendado. Se essa loja sofrer um vazamento, quem tiver \"{password}\" poderia tentar entrar no seu banco. Use uma senha diferente, de preferência gerada por um gerenciador de senhas, e troque a do banco, já que você a escreveu aqui."),
    ],
    # 16 Czech wedding guest list
    [
        ("user", "Ahoj, pomůžeš mi se seznamem hostů na svatbu? Zatím mám: {name}, {name2}, {first3} s partnerem, a ještě teta z {city}. Potřebuju z toho udělat tabulku s adresami na pozvánky. {first} bydlí na {address}."),
        ("assistant", "Jasně! Tady je tabulka, kterou můžeš doplňovat:\n\n| Host | Adresa | Počet osob |\n|---|---|---|\n| {name} | {address} | 1 |\n| {name2} | | 1 |\n| {first3} + partner | | 2 |\n| teta ({city}) | | 1 |\n\nAž budeš mít další adresy, pošli je a doplním je."),
        ("user", "{name2} má stejnou adresu jako {first}, jsou spolu. a na přihlášení do svatebního webu jsem dala heslo {password}, pošleš jim to do pozvánky?"),
        ("assistant", "Upravená tabulka:\n\n| Host | Adresa | Počet osob |\n|---|---|---|\n| {name} a {name2} | {address} | 2 |\n| {first3} + partner | | 2 |\n| teta ({city}) | | 1 |\n\nText do pozvánky: \"Podrobnosti najdete na našem svatebním webu, heslo pro vstup: {password}\"."),
    ],
    # 17 Hungarian, address_qq export
    [
        ("user", "Szia! Kimentettem a rendeléseket a webshopból és a szállítási cím így néz ki: {address_qq}. Hogy tudom Excelben rendesen szétszedni? A vevő {name}, tel: {phone}"),
        ("assistant", "A \"???\" jelek valószínűleg elveszett sortörések. Excelben:\n\n1. Jelöld ki az oszlopot.\n2. Adatok → Szövegből oszlopok → Határolójellel tagolt.\n3. Egyéb határoló: `?` és pipáld be az \"Egymást követő határolók egynek számítanak\" opciót.\n\nÍgy ebből: {address_qq}\nez lesz:\n- {street}\n- {post} {city}\n- {country}"),
        ("user", "köszi! és képlettel?"),
        ("assistant", "Újabb Excelben: `=SZÖVEGFELOSZTÁS(A2;\"???\")`. Ez {name} címét három cellára bontja: {street} | {post} {city} | {country}."),
    ],
    # 18 Danish family passwords
    [
        ("user", "hej, jeg skal skrive en seddel til vores babysitter {first3}. den skal indeholde wifi koden, som er {password}, mit nummer {phone} og min mands nummer. han hedder {name2}. kan du skrive den pænt?"),
        ("assistant", "Selvfølgelig! Her er et forslag:\n\nKære {first3}\n\nVelkommen! Her er det vigtigste:\n\n- Wifi: {password}\n- {first}: {phone}\n- {first2}: (indsæt nummer)\n\nI nødstilfælde ring 112. Adressen er {street}, {post} {city}.\n\nTak for hjælpen!\nHilsen {first} og {first2}"),
        ("user", "perfekt tak. {first2}s nummer er det samme som mit lige nu, hans telefon er gået i stykker haha"),
        ("assistant", "Så skriv bare: \"{first} og {first2}: {phone}\". Så er det tydeligt for {first3}."),
    ],
    # 19 JSON payload with IBAN
    [
        ("user", "API returns 422 on this, what's wrong?\n\n{{\n  \"beneficiary\": {{\n    \"name\": \"{name}\",\n    \"iban\": \"{iban}\",\n    \"email\": \"{email}\"\n  }},\n  \"amount\": \"250,00\",\n  \"currency\": \"EUR\"\n}}"),
        ("assistant", "Most payment APIs expect `amount` as a number (or a string with a dot), not `\"250,00\"`. Also check that the IBAN has no spaces if the API is strict. Try:\n\n```json\n{{\n  \"beneficiary\": {{\n    \"name\": \"{name}\",\n    \"iban\": \"{iban}\",\n    \"email\": \"{email}\"\n  }},\n  \"amount\": 250.00,\n  \"currency\": \"EUR\"\n}}\n```"),
        ("user", "still 422. oh the error body says beneficiary.address required"),
        ("assistant", "Then add an address object for {name}:\n\n```json\n\"address\": {{\n  \"line1\": \"{street}\",\n  \"postal_code\": \"{post}\",\n  \"city\": \"{city}\",\n  \"country\": \"{country}\"\n}}\n```\n\nSome APIs want `country` as an ISO code (e.g. DE) rather than \"{country}\"."),
    ],
    # 20 shell curl with credentials
    [
        ("user", "this curl gives me 401 but i can log in on the website fine with the same creds\n\ncurl -u {email}:{password} https://api.example.com/v2/me"),
        ("assistant", "A few common causes:\n\n1. If the password contains shell special characters (`!`, `$`, `&`), the shell may alter it. Quote it:\n\n```sh\ncurl -u '{email}:{password}' https://api.example.com/v2/me\n```\n\n2. Many APIs don't accept your website login; they want an API token instead of `{password}`.\n3. If two-factor authentication is on, basic auth is often disabled.\n\nAfter testing, consider changing that password since it's now in your shell history."),
        ("user", "quoting fixed it lol. the pw had a $ in it. thanks"),
    ],
    # 21 travel agency with system turn, passport
    [
        ("system", "You are a booking assistant for a travel agency. Be concise."),
        ("user", "I need to add passenger details for the Lisbon trip. Lead passenger: {name}, {id_kind} {id}. Second passenger is {name2}, don't have theirs yet. Contact email {email}"),
        ("assistant", "Thanks. I've noted:\n\n1. {name}: {id_kind} {id}\n2. {name2}: document pending\n\nConfirmation will go to {email}. Please send {first2}'s document details at least 72 hours before departure."),
        ("user", "great. also invoice should go to my company address: {address_lines}\nand charge the balance to the card ending... actually just use the full one, {card}, exp 11/28"),
        ("assistant", "Noted. Invoice address:\n\n{name}\n{address_lines}\n\nFor security, please don't send full card numbers in chat. Use the secure payment link we'll email to {email}; the card {card} will not be stored from this conversation."),
    ],
    # 22 gift shipping, possessive, lower case
    [
        ("user", "{first}'s birthday is next week and i want to send her a surprise. what should i write on the card? we've been friends since school. oh and it has to ship to {address_lower}"),
        ("assistant", "Here are a few ideas for the card:\n\n- \"Happy birthday, {first}! Twenty-odd years of friendship and you're still stuck with me.\"\n- \"To {first}, who has known me since braces and bad haircuts: happy birthday!\"\n\nFor shipping, write the address as:\n\n{name}\n{address_lines}"),
        ("user", "lol the first one. sign it from me and {first2}. and put my number {phone} in case courier needs it"),
        ("assistant", "Card text:\n\n\"Happy birthday, {first}! Twenty-odd years of friendship and you're still stuck with me. Love, {first2} and me\"\n\nFor the courier, add {phone} as the sender's contact number on the shipping form, not on the card itself."),
    ],
    # 23 Slack-like thread
    [
        ("user", "can you turn this slack thread into a short status update for my manager?\n\n[10:02] {first2}: @{first_lower} did you get {name}'s new address for the contract?\n[10:05] {name_lower}: yes, it's {address}. also my new mobile is {phone}\n[10:06] {first2}: thx! HR also needs your {id_kind}\n[10:09] {name_lower}: {id}\n[10:10] {first3}: contract goes out tomorrow then"),
        ("assistant", "Status update:\n\n- {name} provided an updated address ({address}) and new mobile number ({phone}) for the contract.\n- {name}'s {id_kind} ({id}) has been shared with HR.\n- {first3} confirmed the contract will be sent out tomorrow.\n\nYou may want to leave the {id_kind} out of the manager update, since HR already has it."),
        ("user", "yeah drop the id"),
        ("assistant", "Status update:\n\n- {name} provided an updated address ({address}) and new mobile ({phone}).\n- HR has the required ID details.\n- Contract goes out tomorrow ({first3})."),
    ],
    # 24 payroll markdown table with system turn
    [
        ("system", "You are an assistant that helps small business owners with bookkeeping."),
        ("user", "Ich hab die Gehaltsliste für diesen Monat, kannst du prüfen, ob was fehlt?\n\n| Mitarbeiter | Steuer-ID | IBAN | Brutto |\n|---|---|---|---|\n| {name} | {id} | {iban} | 3.200 € |\n| {name2} | | DE | 2.850 € |"),
        ("assistant", "Bei {name2} fehlen die Steuer-ID und die vollständige IBAN (es steht nur \"DE\"). Ohne diese Angaben kann die Lohnabrechnung für {first2} nicht korrekt erstellt bzw. überwiesen werden.\n\nBei {name} ist alles vollständig: Steuer-ID {id}, IBAN {iban}, Brutto 3.200 €."),
        ("user", "ok, {first2} schickt mir die Daten morgen an {email}. Kannst du mir eine kurze Erinnerungsmail an sie schreiben?"),
        ("assistant", "Hallo {first2},\n\nfür die Gehaltsabrechnung diesen Monat fehlen mir noch deine Steuer-ID und deine vollständige IBAN. Schick sie mir bitte bis morgen an {email}.\n\nDanke und viele Grüße\n{first}"),
    ],
]
HELD_OUT_11_TEMPLATES: list[list[tuple[str, str]]] = [
    # 1 German landlord letter
    [
        ("user", "hallo, kannst du mir helfen einen brief an meinen vermieter zu schreiben? ich bin {name}, wohne in der {street} in {post} {city}. die heizung geht seit zwei wochen nicht und er reagiert nicht auf anrufe"),
        ("assistant", """Gerne! Hier ein Entwurf:

{name}
{address_lines}

Betreff: Mängelanzeige – Ausfall der Heizung

Sehr geehrte Damen und Herren,

hiermit zeige ich an, dass die Heizung in meiner Wohnung in der {street} seit zwei Wochen nicht funktioniert. Ich bitte Sie, den Mangel bis spätestens zum Ende dieser Woche zu beheben.

Mit freundlichen Grüßen
{name}

Soll ich noch eine Frist mit Mietminderung ergänzen?"""),
        ("user", "ja bitte, und meine handynummer {phone} soll auch rein damit er mich erreicht"),
        ("assistant", "Klar, ich ergänze unter Ihrem Namen: \"Sie erreichen mich jederzeit unter {phone}.\" Außerdem füge ich hinzu, dass Sie sich eine Minderung der Miete vorbehalten, falls der Mangel nicht fristgerecht behoben wird."),
    ],
    # 2 Python dict of customers
    [
        ("user", """why does this throw a KeyError??

customers = {{
    "c001": {{"name": "{name}", "email": "{email}", "phone": "{phone}"}},
    "c002": {{"name": "{name2}", "email": None}},
}}

for cid, c in customers.items():
    print(c["name"], c["phone"])"""),
        ("assistant", """The second customer, `c002` ({name2}), has no `"phone"` key, so `c["phone"]` fails on that iteration. Only {name}'s record has it. Use `.get()`:

```python
for cid, c in customers.items():
    print(c["name"], c.get("phone", "n/a"))
```

That prints `{name} {phone}` for the first and `{name2} n/a` for the second."""),
    ],
    # 3 SQL with IBAN
    [
        ("user", """getting a syntax error on this, postgres 15

INSERT INTO payees (full_name, iban, contact_email, created_at)
VALUES ('{name2}', '{iban}', '{email}' NOW());"""),
        ("assistant", """You're missing a comma after the email value. Corrected:

```sql
INSERT INTO payees (full_name, iban, contact_email, created_at)
VALUES ('{name2}', '{iban}', '{email}', NOW());
```

Tip: if a name ever contains an apostrophe, use parameterised queries instead of pasting values into the SQL string."""),
        ("user", "thx. also how do i strip spaces from the iban column for existing rows"),
        ("assistant", "`UPDATE payees SET iban = REPLACE(iban, ' ', '');` — after that a value like {iban} will be stored without spaces."),
    ],
    # 4 casual wifi password
    [
        ("user", "ok so my laptop wont connect to the wifi anymore. i changed it yesterday to {password} on the router page and now the laptop just says cant connect. phone works fine tho"),
        ("assistant", "Your laptop is probably still trying the old saved key. Forget the network (Settings → Wi-Fi → Manage known networks → Forget), then reconnect and type the new one, {password}, carefully — watch upper/lower case."),
        ("user", "omg that worked. btw my sister {first2} is coming over, is it safe to just text her the wifi thing to {phone}?"),
        ("assistant", "Texting it to {first2} is fine for a home network. If you want to be tidier, set up a guest network so you don't have to share your main key."),
    ],
    # 5 French blocked card
    [
        ("user", "Bonjour, ma carte bancaire a été bloquée après un paiement en ligne. Le numéro c'est {card}. Je dois appeler qui ? Ma banque m'a envoyé un SMS au {phone} mais je ne sais pas si c'est une arnaque"),
        ("assistant", """Bonjour ! Quelques conseils :

1. N'utilisez pas le numéro indiqué dans le SMS. Appelez le numéro au dos de votre carte ou celui de votre espace client.
2. Ne communiquez jamais le numéro complet de votre carte ({card}) ni votre code par téléphone ou SMS.
3. Si le SMS reçu au {phone} contient un lien, ne cliquez pas dessus.

Pour l'avenir, évitez de partager votre numéro de carte dans une conversation comme celle-ci."""),
        ("user", "ah mince ok merci"),
    ],
    # 6 forwarded email with signature
    [
        ("user", """can you summarise this for me and draft a short reply saying yes to thursday

---------- Forwarded message ---------
From: {name} <{email}>
Date: Mon, 3 Mar 2025 at 09:14
Subject: Re: site visit
To: {name2}

Hi {first2},

Following up on our call — we could do the site visit on Thursday at 10:00 or Friday after lunch. The address is {address}, parking is at the back.

Best regards,
{name}
Project Coordinator
M: {phone}
{email}"""),
        ("assistant", """**Summary:** {first} is proposing a site visit on Thursday at 10:00 or Friday afternoon at {address} (parking at the back).

**Reply draft:**

Hi {first},

Thanks for following up. Thursday at 10:00 works for me — see you at {street}.

Best,
{first2}"""),
    ],
    # 7 Spanish passport renewal
    [
        ("user", "hola! tengo que renovar el pasaporte de mi madre, {name}. su {id_kind} es {id} y caduca el mes que viene. qué documentos necesito llevar?"),
        ("assistant", """¡Hola! Para renovar el documento de {name} normalmente necesitas:

- El documento actual ({id_kind}: {id})
- Una fotografía reciente en color
- El pago de la tasa
- Cita previa

Como {first} tiene que ir en persona para la huella dactilar, conviene pedir la cita cuanto antes."""),
        ("user", "vale, y si vive en {city} puede ir a cualquier oficina?"),
        ("assistant", "Sí, puede pedir cita en cualquier oficina de expedición, no tiene que ser la de {city}."),
    ],
    # 8 YAML config with credentials
    [
        ("user", """my docker compose keeps failing, db container exits immediately

services:
  db:
    image: postgres:16
    environment:
      POSTGRES_USER: {first_lower}
      POSTGRES_PASSWORD: {password}
      POSTGRES_DB: shop
  app:
    build: .
    environment:
      ADMIN_EMAIL: {email}
      DATABASE_URL: postgres://{first_lower}:{password}@db:5432/shop"""),
        ("assistant", """The compose file looks OK syntactically. Check `docker compose logs db` — the usual causes are:

1. An old volume initialised with different credentials: the user `{first_lower}` and the password you set are only applied on first init. Run `docker compose down -v` to reset.
2. Special characters in `{password}` breaking the `DATABASE_URL`; URL-encode them there.

Also consider moving the secret into an `.env` file rather than committing it with `{email}` in the repo."""),
    ],
    # 9 CSV list of people
    [
        ("user", """clean this up, the columns are shifted on some rows

name,email,phone,city
{name},{email},{phone},{city}
{name2},,{city}
{first3} ,  ,"""),
        ("assistant", """Here it is with the columns aligned (missing values left blank):

```csv
name,email,phone,city
{name},{email},{phone},{city}
{name2},,,{city}
{first3},,,
```

Row 2 had the city in the phone column, and row 3 only has a first name ({first3}) — you may want to fill in the surname."""),
    ],
    # 10 markdown table of team contacts, system turn
    [
        ("system", "You are a helpful assistant. Format answers in Markdown."),
        ("user", "make a table of the on-call rota: me ({name}, {phone}) mon-wed, {name2} thu-fri, {first3} weekends. my email is {email} the others use the shared inbox"),
        ("assistant", """| Days | Person | Phone | Email |
|------|--------|-------|-------|
| Mon–Wed | {name} | {phone} | {email} |
| Thu–Fri | {name2} | – | shared inbox |
| Sat–Sun | {first3} | – | shared inbox |

Want me to add the phone numbers for {first2} and {first3} once you have them?"""),
    ],
    # 11 Polish bank transfer
    [
        ("user", "cześć, muszę zrobić przelew do {name2} za mieszkanie, numer konta {iban}. jak napisać tytuł przelewu żeby było jasne że to czynsz za marzec?"),
        ("assistant", """Proponuję taki tytuł:

"Czynsz za marzec 2025 – {street}, {city}"

Odbiorca: {name2}
Rachunek: {iban}

Dzięki adresowi w tytule {first2} od razu będzie wiedział(a), którego mieszkania dotyczy wpłata."""),
    ],
    # 12 Dutch moving
    [
        ("user", "Hoi, ik ga verhuizen naar {address} en moet dat doorgeven aan de gemeente en mijn zorgverzekeraar. Kun je een kort berichtje schrijven? Mijn naam is {name} en mijn nummer is {phone}. Voor de verzekeraar: mijn rekening blijft {iban}."),
        ("assistant", """Natuurlijk! Hier een voorbeeld:

Beste heer/mevrouw,

Graag geef ik mijn adreswijziging door. Vanaf 1 april woon ik op het volgende adres:

{address_lines}

U kunt mij bereiken op {phone}. Mijn rekeningnummer ({iban}) blijft ongewijzigd.

Met vriendelijke groet,
{name}"""),
        ("user", "top, dank je"),
    ],
    # 13 Slack-like export with ??? address
    [
        ("user", """[10:02] {name}: hey can someone send the parcel to the new office
[10:03] {name2}: sure whats the address
[10:05] {name}: {address_qq}
[10:05] {name}: attn {first3} at reception
[10:07] {name2}: 👍 courier wants prepayment, ok to use the company card?
[10:08] {name}: yep {card} exp 08/27
[10:08] {name}: and the wifi there is {password} if you need it when you drop by

^ this is from our slack export, the address came out weird. can you fix it into a proper label"""),
        ("assistant", """The `???` are lost line breaks. Here's the label:

Attn: {first3} (Reception)
{address_lines}

Sender: {name}

Side note: the export also contains the company card number and the Wi-Fi key in plain text — you may want to remove those before sharing it."""),
    ],
    # 14 phone dictated around slot
    [
        ("user", "can you write a voicemail greeting for my small cleaning business? name is {first}'s Sparkle Clean, callback number is {phone}, and people can also email me on {email}"),
        ("assistant", """Sure:

"Hi, you've reached {first}'s Sparkle Clean! Sorry we can't take your call right now. Please leave your name and number after the tone, or call us back on {phone}. You can also email {email} and we'll reply within one working day. Thanks!"

Tip: when recording, read the number slowly in groups — people often jot it down while listening."""),
        ("user", "perfect. should i say my full name {name} too or is that weird"),
        ("assistant", "Not weird at all — \"This is {name} from {first}'s Sparkle Clean\" sounds personal and trustworthy."),
    ],
    # 15 Italian CV
    [
        ("user", "ciao! mi aiuti a sistemare l'intestazione del curriculum? {name}, nato a {city}, residente in {street}, {post} {city}, cell {phone}, mail {email}"),
        ("assistant", """Certo! Ecco un'intestazione pulita:

**{name}**
{street} · {post} {city}
📞 {phone} · ✉️ {email}

Non è necessario indicare il luogo di nascita, a meno che non sia richiesto. Vuoi che aggiunga un link a LinkedIn?"""),
        ("user", "no va bene cosi, grazie mille"),
    ],
    # 16 Portuguese (Brazil) tax / email
    [
        ("user", "oi, preciso mandar um email pro contador com meus dados pra declaração do imposto. meu nome é {name}, {id_kind} {id}, email {email}. pode escrever algo formal?"),
        ("assistant", """Claro! Segue uma sugestão:

Assunto: Documentos para a declaração do IR 2025

Prezado contador,

Segue em anexo a documentação para a declaração do imposto de renda. Meus dados:

Nome: {name}
{id_kind}: {id}
E-mail: {email}

Fico à disposição para qualquer dúvida.

Atenciosamente,
{name}"""),
    ],
    # 17 Czech formal request
    [
        ("user", "dobrý den, potřebuji napsat žádost o prodloužení nájemní smlouvy. jmenuji se {name}, bydlím na adrese {address}, pronajímatel je {name2}."),
        ("assistant", """Dobrý den, zde je návrh:

{name}
{address_lines}

Vážený pane / Vážená paní {name2},

tímto Vás žádám o prodloužení nájemní smlouvy k bytu na adrese {street}, {city}, a to o dalších 12 měsíců.

Děkuji za kladné vyřízení.

S pozdravem
{name}"""),
    ],
    # 18 Hungarian ID / car registration
    [
        ("user", "szia! át kell íratnom az autót a nevemre. {name} vagyok, a {id_kind} számom {id}. milyen papírok kellenek még?"),
        ("assistant", """Szia {first}! Az átíráshoz általában ezek kellenek:

- adásvételi szerződés
- a forgalmi engedély és a törzskönyv
- személyazonosító okmány ({id_kind}: {id})
- a vagyonszerzési illeték befizetése

Ha valaki más intézi helyetted, meghatalmazás is kell."""),
        ("user", "köszi! a tesóm {first2} intézné, ő is a {city}i kormányablakba menne"),
    ],
    # 19 Danish invoice with IBAN
    [
        ("user", "hej, kan du lave en simpel faktura? fra {name}, {address}, til {name2}. 8 timers rengøring à 350 kr. betaling til {iban}, tlf {phone}"),
        ("assistant", """Selvfølgelig! Her er et udkast:

**FAKTURA nr. 2025-014**

Fra: {name}
{address_lines}
Tlf.: {phone}

Til: {name2}

| Beskrivelse | Timer | Pris | I alt |
|---|---|---|---|
| Rengøring | 8 | 350 kr. | 2.800 kr. |

**Total: 2.800 kr.**

Betales til: {iban}
Betalingsfrist: 14 dage

Tak for samarbejdet, {first2}!"""),
    ],
    # 20 HR JSON record with system turn
    [
        ("system", "You are an assistant for the HR team. Answer concisely."),
        ("user", """validate this employee record against our schema, onboarding tool rejects it

{{
  "employee": {{
    "fullName": "{name}",
    "email": "{email}",
    "phone": "{phone}",
    "nationalId": {{"type": "{id_kind}", "value": "{id}"}},
    "address": {{"street": "{street}", "postcode": "{post}", "city": "{city}", "country": "{country}"}},
    "manager": "{name2}"
  }}
}}"""),
        ("assistant", """The JSON itself is valid. Likely schema issues:

- `nationalId.value` must match the format for the given type — check that "{id}" is accepted for a {id_kind}.
- `postcode` "{post}" may need to be a string with the country's format; it already is, so check the country code: many schemas expect ISO codes, not "{country}".
- `manager` is usually an employee ID, not a name like "{name2}".

Fix the country and manager fields first."""),
    ],
    # 21 shell curl with credentials
    [
        ("user", """this curl returns 401 and i dont get why, the login works in the browser

curl -X POST https://api.example-shop.io/v2/orders \\
  -u "{email}:{password}" \\
  -H "Content-Type: application/json" \\
  -d '{{"customer": "{name}", "card": "{card}", "qty": 2}}'"""),
        ("assistant", """A few things:

1. The API probably wants a token, not your login. Browser sessions use cookies, so `-u {email}:...` with basic auth is rejected.
2. If your password contains `$` or `!`, the shell may mangle it inside double quotes; use single quotes.
3. Please don't send full card numbers like {card} in raw JSON to an API — use the payment provider's tokenisation.

Also: you've pasted your real credentials here, so I'd change that password now."""),
        ("user", "ugh yeah ok, changing it. new one will be something like {password}2 lol"),
    ],
    # 22 lower-case birthday party, possessive
    [
        ("user", "help me write a whatsapp msg inviting ppl to {first_lower}'s surprise 30th. its at our place {address_lower}, saturday 7pm, dont tell {first}!! rsvp to me {name_lower} on {phone}"),
        ("assistant", """Here you go:

🎉 Shhh! Surprise party! 🎉
{first} is turning 30 and we're throwing a surprise party on **Saturday at 7pm** at {address}.

Please DON'T tell {first}! 🤫
RSVP to {name} on {phone} by Thursday.

Bring your best party mood 🥳"""),
        ("user", "can u make it less cheesy"),
        ("assistant", "Sure: \"Surprise party for {first}'s 30th — Saturday 7pm at {address}. Keep it secret! RSVP to me on {phone}.\""),
    ],
    # 23 names after punctuation, meeting notes
    [
        ("user", "turn these notes into minutes pls: met w/ vendor.{name2} said delivery slips to may;{name} (ops) disagreed,wants penalty clause.action:{first3} to send revised contract to {email} by fri.cc:{first2}"),
        ("assistant", """**Meeting minutes – vendor call**

**Attendees:** {name}, {name2}, {first3}

**Discussion**
- {name2} reported that delivery will slip to May.
- {name} (Ops) disagreed and requested a penalty clause in the contract.

**Actions**
- {first3} to send the revised contract to {email} by Friday.

cc: {first2}"""),
    ],
    # 24 reference letter / card dispute mix, possessive and surname
    [
        ("user", "I need to dispute a charge on my card, number is {card} — a hotel in {city} charged me twice. Can you write the letter to the bank? I'm {name}, {address}."),
        ("assistant", """Of course. Here's a draft:

{name}
{address_lines}

Dear Sir or Madam,

I am writing to dispute a duplicate charge on my card ({card}). A hotel in {city} charged my account twice for the same stay. I have a receipt showing a single payment and request that the duplicate amount be refunded.

Please contact me if you need further information.

Yours faithfully,
{name}

Tip: banks usually only need the last four digits in writing — you can mask the rest."""),
        ("user", "good. can you change it to Mr {surname} in the closing and add my email {email}"),
        ("assistant", "Done — the closing now reads \"Yours faithfully, Mr {surname}\" followed by \"Email: {email}\" underneath {name}'s address block."),
    ],
]


HELD_OUT_12_TEMPLATES: list[list[tuple[str, str]]] = [
    # 1 landlord letter (EN), assistant reuses values
    [
        ("user", "can you write a short letter to my landlord asking for my deposit back? I moved out on the 30th. my details:\n{name}\n{address_lines}\nbank for the refund is {iban}, and he can reach me at {email}"),
        ("assistant", "Of course. Here's a draft:\n\n{name}\n{address_lines}\n\nDear Landlord,\n\nI vacated the property on the 30th and returned all keys. I would be grateful if you could return my security deposit in full to the following account:\n\nIBAN: {iban}\nAccount holder: {name}\n\nIf there are any questions about the condition of the flat, please contact me at {email}.\n\nKind regards,\n{name}"),
        ("user", "perfect, maybe sign it just {first}?"),
        ("assistant", "Sure, just replace the final line with \"Kind regards, {first}\". Everything else can stay the same."),
    ],
    # 2 German gym cancellation
    [
        ("user", "Hallo, ich muss meinen Vertrag beim Fitnessstudio kündigen. Kannst du mir ein Schreiben aufsetzen? Ich heiße {name}, wohne in der {street}, {post} {city}. Mitgliedsnummer weiß ich nicht, aber meine {id_kind} ist {id}, falls die das brauchen."),
        ("assistant", "Gerne! Hier ein Vorschlag:\n\n{name}\n{street}\n{post} {city}\n\nBetreff: Kündigung meiner Mitgliedschaft\n\nSehr geehrte Damen und Herren,\n\nhiermit kündige ich meine Mitgliedschaft fristgerecht zum nächstmöglichen Zeitpunkt. Zur Identifikation: {id_kind} {id}.\n\nBitte bestätigen Sie mir die Kündigung schriftlich und stellen Sie die Lastschriften ein.\n\nMit freundlichen Grüßen\n{name}"),
        ("user", "danke!! sollen die auch die IBAN haben damit sie nix mehr abbuchen? die ist {iban}"),
        ("assistant", "Das ist nicht nötig, aber Sie können einen Satz ergänzen: „Bitte widerrufen Sie das SEPA-Lastschriftmandat für das Konto {iban}.“"),
    ],
    # 3 python dict with customer record (system turn)
    [
        ("system", "You are a helpful coding assistant."),
        ("user", "why does this throw KeyError?\n\n```python\ncustomer = {{\n    \"name\": \"{name}\",\n    \"email\": \"{email}\",\n    \"phone\": \"{phone}\",\n    \"card\": \"{card}\",\n}}\nprint(customer[\"Name\"])\n```"),
        ("assistant", "Dictionary keys are case-sensitive. You defined `\"name\"` but access `\"Name\"`. Use:\n\n```python\nprint(customer[\"name\"])  # -> {name}\n```\n\nAlso, storing a raw card number like `{card}` in plain code is risky; consider masking it, e.g. `customer[\"card\"][-4:]`."),
        ("user", "ah ok thx. and how do i print it like \"{first} <{email}>\"?"),
        ("assistant", "Use an f-string:\n\n```python\nfirst = customer[\"name\"].split()[0]\nprint(f\"{{first}} <{{customer['email']}}>\")\n```\n\nThat prints `{first} <{email}>`."),
    ],
    # 4 SQL insert
    [
        ("user", "INSERT INTO clients (full_name, email, phone, address) VALUES ('{name2}', '{email}', '{phone}', '{address}');\n\nERROR: value too long for type character varying(20)\n\nwhich column is it"),
        ("assistant", "Most likely `phone` or `address`. The address '{address}' is definitely longer than 20 characters, and '{phone}' may be too if it includes spaces or a country code. Check with:\n\n```sql\nSELECT column_name, character_maximum_length\nFROM information_schema.columns\nWHERE table_name = 'clients';\n```\n\nThen widen it, e.g. `ALTER TABLE clients ALTER COLUMN address TYPE varchar(255);`"),
    ],
    # 5 .env with connection string
    [
        ("user", "my app can't connect to postgres, here's my .env\n\n```\nDATABASE_URL=postgres://{first_lower}:{password}@db.internal:5432/shop\nADMIN_EMAIL={email}\nDEBUG=true\n```"),
        ("assistant", "The URL format looks right. A few things to check:\n\n1. If the password `{password}` contains characters like `@`, `:` or `/`, it must be URL-encoded in `DATABASE_URL`.\n2. Make sure the role `{first_lower}` exists: `psql -U postgres -c \"\\du\"`.\n3. Confirm `db.internal` resolves from the app container.\n\nAnd since this file has real credentials, don't commit it - add `.env` to `.gitignore`."),
        ("user", "it has a ! in it, does that matter"),
        ("assistant", "`!` is safe in a URL, so that's not the issue. It can matter in your shell though: if you export it manually, quote it in single quotes: `export DATABASE_URL='postgres://{first_lower}:{password}@db.internal:5432/shop'`."),
    ],
    # 6 docker-compose
    [
        ("user", "review my docker-compose pls\n\n```yaml\nservices:\n  db:\n    image: mysql:8\n    environment:\n      MYSQL_ROOT_PASSWORD: {password}\n      MYSQL_USER: {first_lower}\n  mail:\n    image: mailhog/mailhog\n    environment:\n      - ADMIN_CONTACT={email}\n```"),
        ("assistant", "It works, but I'd suggest moving secrets out of the file:\n\n```yaml\nservices:\n  db:\n    image: mysql:8\n    environment:\n      MYSQL_ROOT_PASSWORD: ${{MYSQL_ROOT_PASSWORD}}\n      MYSQL_USER: {first_lower}\n```\n\nand put `MYSQL_ROOT_PASSWORD={password}` in a `.env` next to it. The `ADMIN_CONTACT={email}` line is fine as is."),
    ],
    # 7 French airbnb welcome note with wifi key
    [
        ("user", "Salut ! Je loue mon appart sur Airbnb, tu peux m'écrire un petit mot d'accueil ? L'adresse c'est {street}, {post} {city}, le wifi s'appelle Livebox-7A2 et la clé c'est {password}. Pour les urgences, mon numéro : {phone}"),
        ("assistant", "Avec plaisir ! Voici une proposition :\n\nBienvenue chez moi !\n\nVous êtes au {street}, {post} {city}. J'espère que vous vous sentirez comme à la maison.\n\n📶 Wifi : Livebox-7A2\n🔑 Clé : {password}\n\nEn cas de souci, appelez-moi au {phone}.\n\nBon séjour,\n{first}"),
        ("user", "top, signe plutôt {name} stp"),
        ("assistant", "Bien sûr : remplacez simplement la signature par « Bon séjour, {name} »."),
    ],
    # 8 forwarded email with signature and address_qq
    [
        ("user", "can you summarize this for me\n\n---------- Forwarded message ---------\nFrom: {name2} <{email}>\nSubject: Re: invoice 2291\n\nHi,\nwe still haven't received payment. Please transfer to {iban} by Friday.\n\nBest,\n{name2}\nAccounts Receivable\n{address_qq}\nTel. {phone}"),
        ("assistant", "Summary: {name2} from Accounts Receivable says invoice 2291 is still unpaid and asks you to transfer the amount to {iban} by Friday. You can reply to {email} or call {phone}."),
        ("user", "whats their postal address? it came out weird"),
        ("assistant", "The line breaks were lost in the export. It reads:\n\n{address_lines}"),
    ],
    # 9 CSV of people
    [
        ("user", "turn this into a markdown table\n\nname,email,phone\n{name},{email},{phone}\n{name2},,\n{first3},,"),
        ("assistant", "| Name | Email | Phone |\n|---|---|---|\n| {name} | {email} | {phone} |\n| {name2} | | |\n| {first3} | | |\n\nThe last two rows are missing contact details, and {first3} has no surname."),
        ("user", "{first3}'s surname is the same as {first}'s, fix that"),
        ("assistant", "| Name | Email | Phone |\n|---|---|---|\n| {name} | {email} | {phone} |\n| {name2} | | |\n| {first3} {surname} | | |"),
    ],
    # 10 Spanish reimbursement form
    [
        ("user", "hola, tengo que rellenar un formulario de reembolso del seguro y no entiendo qué poner en 'titular'. mis datos: {name}, {id_kind} {id}, cuenta {iban}"),
        ("assistant", "¡Hola! «Titular» es la persona a cuyo nombre está la cuenta donde quieres recibir el dinero. Si la cuenta es tuya, quedaría así:\n\n- Titular: {name}\n- Documento ({id_kind}): {id}\n- IBAN: {iban}\n\nAsegúrate de que el nombre coincide exactamente con el que aparece en el banco."),
        ("user", "la cuenta es de mi marido, {name2}"),
        ("assistant", "Entonces en «Titular» pon {name2}, y el IBAN {iban} se mantiene. Es posible que te pidan una autorización firmada por {first2}."),
    ],
    # 11 Polish cover letter
    [
        ("user", "Cześć, pomóż mi napisać nagłówek do listu motywacyjnego. Nazywam się {name}, mieszkam: {address}, tel. {phone}, mail {email}"),
        ("assistant", "Jasne! Proponuję taki nagłówek:\n\n{name}\n{address}\ntel.: {phone}\ne-mail: {email}\n\n{city}, dnia ..........\n\nSzanowni Państwo,\n\nz dużym zainteresowaniem przeczytałem/am Państwa ogłoszenie..."),
        ("user", "super, a numer telefonu mam podać z +48?"),
        ("assistant", "Jeśli aplikujesz w Polsce, nie jest to konieczne, ale nie zaszkodzi. Ważne, żeby {phone} był zapisany czytelnie, np. w grupach po trzy cyfry."),
    ],
    # 12 Italian hotel booking
    [
        ("user", "ciao! devo scrivere una mail all'hotel a {city} per garantire la prenotazione con la carta. nome {name}, carta {card} scad. 08/27"),
        ("assistant", "Ecco una bozza:\n\nGentile Staff,\n\nvi scrivo per garantire la prenotazione a nome di {name} per le notti dal 12 al 15 giugno. I dati della carta sono:\n\nTitolare: {name}\nNumero: {card}\nScadenza: 08/27\n\nVi prego di confermare la ricezione.\n\nCordiali saluti,\n{name}\n\nUn consiglio: se possibile, evita di inviare il numero completo della carta via e-mail e usa il link di pagamento dell'hotel."),
        ("user", "giusto, allora metto solo le ultime 4 cifre"),
    ],
    # 13 curl command
    [
        ("user", "curl -X POST https://api.example-crm.io/v2/login -H \"Content-Type: application/json\" -d '{{\"username\": \"{email}\", \"password\": \"{password}\"}}'\n\ngetting 415 unsupported media type??"),
        ("assistant", "A 415 usually means the server didn't see the `Content-Type` header you intended. On Windows `cmd` single quotes aren't supported, so the body gets mangled. Try:\n\n```\ncurl -X POST https://api.example-crm.io/v2/login ^\n  -H \"Content-Type: application/json\" ^\n  -d \"{{\\\"username\\\": \\\"{email}\\\", \\\"password\\\": \\\"{password}\\\"}}\"\n```\n\nOr put the JSON in a file and use `-d @body.json`."),
    ],
    # 14 casual lowercase, dictated number
    [
        ("user", "ok so the pharmacy needs my contact info for the delivery. name is {name_lower}, number is {phone} (thats my mobile, not landline), and they deliver to {address_lower}. can u make it into a short msg i can paste"),
        ("assistant", "Here you go:\n\n\"Hello, this is {name}. Please deliver my prescription to {address}. You can reach me on my mobile at {phone}. Thank you!\""),
        ("user", "they said over the phone my number is wrong, i read it out as {phone} - plus the zero at the start?"),
        ("assistant", "If the number starts with a country code like +44 or +49, you usually drop the leading 0. Otherwise, dial {phone} exactly as written. You could also ask them to read it back to you digit by digit."),
    ],
    # 15 markdown table team roster, names after punctuation
    [
        ("user", "who's on call this week? here's the rota:\n\n| Week | Primary | Backup | Phone |\n|---|---|---|---|\n| 14 | {name} | {name2} | {phone} |\n| 15 | {name2} | {first3} | |\n\nbtw: {first2} swapped with {first3} for wk 15"),
        ("assistant", "For week 14, {name} is primary and {name2} is backup; you can reach the primary at {phone}. For week 15, after the swap, {first3} is primary and {first2} is backup."),
        ("user", "and whose phone is that number, {first}'s?"),
        ("assistant", "Yes, the number {phone} is in {name}'s row, so it's {first}'s."),
    ],
    # 16 Dutch rental contract
    [
        ("user", "Hoi, kun je checken of dit klopt voor het huurcontract?\n\nHuurder: {name}\nAdres gehuurde woning: {street}, {post} {city}\nHuur wordt maandelijks overgemaakt naar {iban}\nLegitimatie: {id_kind} {id}"),
        ("assistant", "Het ziet er compleet uit. Let op een paar dingen:\n\n- Controleer of de naam {name} precies overeenkomt met je {id_kind} ({id}).\n- Bij het adres ({street}, {post} {city}) mag de postcode niet ontbreken; dat is goed.\n- Zorg dat duidelijk is dat {iban} de rekening van de verhuurder is, niet die van jou.\n\nVerder mis ik de ingangsdatum en de hoogte van de borg."),
    ],
    # 17 Portuguese (BR) with CPF-like id and phone
    [
        ("user", "oi! preciso mandar meus dados pro RH por whatsapp, me ajuda a organizar? nome completo {name}, {id_kind}: {id}, celular {phone}, email {email}"),
        ("assistant", "Claro! Pode mandar assim:\n\n*Dados para cadastro*\nNome: {name}\n{id_kind}: {id}\nCelular: {phone}\nE-mail: {email}\n\nSe o RH pedir comprovante de residência, já deixe separado também."),
        ("user", "e o endereço? é {address}"),
        ("assistant", "Acrescente uma linha: Endereço: {address}, {country}."),
    ],
    # 18 Czech router PIN
    [
        ("user", "Ahoj, nemůžu se přihlásit do routeru. Na štítku je PIN {password}, ale píše to chybu. Síť nastavoval můj bratr {first2}."),
        ("assistant", "Zkus tohle:\n\n1. Otevři v prohlížeči 192.168.0.1 nebo 192.168.1.1.\n2. Jako uživatele zadej `admin` a jako heslo PIN ze štítku: {password}.\n3. Pokud to nejde, {first2} nejspíš heslo změnil - zeptej se ho, nebo router resetuj (podržet tlačítko RESET 10 s)."),
        ("user", "{first2} říká že to přepsal na tohle: {password}, takže je to stejný..."),
        ("assistant", "Pak může jít o velká a malá písmena nebo o mezeru navíc na konci. Zkus to napsat ručně, ne zkopírovat."),
    ],
    # 19 Hungarian bank email
    [
        ("user", "Szia! Írj egy rövid e-mailt a bankomnak, hogy letiltottam a kártyámat ({card}), és kérem az új kártyát. Név: {name}, számlaszám: {iban}"),
        ("assistant", "Természetesen, itt egy javaslat:\n\nTisztelt Ügyfélszolgálat!\n\nTájékoztatom Önöket, hogy a(z) {card} számú bankkártyámat letiltottam, mivel elveszett. Kérem, küldjenek új kártyát a(z) {iban} számlához tartozóan.\n\nKöszönettel:\n{name}"),
        ("user", "a postacímet is írd bele: {address}"),
        ("assistant", "Az aláírás elé beszúrhatja: „Az új kártyát kérem a következő címre postázni: {address}.”"),
    ],
    # 20 Danish address change
    [
        ("user", "Hej! Vi er flyttet og skal sende besked til familien. Kan du skrive en kort besked? Den nye adresse er:\n{address_lines}\nVi er {first} og {first2}"),
        ("assistant", "Selvfølgelig! Her er et forslag:\n\nKære alle,\n\nVi er flyttet! Fremover kan I finde os på:\n\n{address_lines}\n\nI er altid velkomne til en kop kaffe.\n\nKærlig hilsen\n{first} og {first2}"),
        ("user", "tak! skal vi skrive efternavn? {surname}"),
        ("assistant", "Det er ikke nødvendigt til familien, men til postkassen bør der stå \"{first} og {first2} {surname}\" på skiltet."),
    ],
    # 21 shared vault entry (system turn)
    [
        ("system", "You are an assistant for the IT team. Be concise."),
        ("user", "new hire starts monday. write her a welcome note with how to log in. the shared vault entry for the office printer is admin / {password}, and her account is {email}. her name is {name}."),
        ("assistant", "Hi {first},\n\nWelcome aboard! Your account is {email}; you'll set your own password at first sign-in.\n\nFor the office printer, use `admin` with {password} to sign in (it's also in the shared vault under \"Printer - 2nd floor\").\n\nAny problems, just ping IT.\n\nCheers,\nIT Team"),
        ("user", "don't put the printer one in the note, just tell her it's in the vault"),
        ("assistant", "Updated:\n\nHi {first},\n\nWelcome aboard! Your account is {email}; you'll set your own password at first sign-in. The printer login is in the shared vault under \"Printer - 2nd floor\".\n\nCheers,\nIT Team"),
    ],
    # 22 slack-like possessives and card
    [
        ("user", "[10:42] {name}: @{first_lower} can you book the flights for the offsite? use {name2}'s corporate card, {card}, exp 11/26\n[10:44] {name2}: yep that's fine, receipts to {email} pls\n\ncan you draft my reply confirming"),
        ("assistant", "Sure:\n\n\"On it! I'll book the flights using {first2}'s corporate card ending in the last four digits of {card}, and send all receipts to {email}. Will confirm once tickets are issued.\""),
        ("user", "also put {first}'s phone on the booking, {phone}"),
        ("assistant", "Add: \"Contact number on the booking will be {first}'s: {phone}.\""),
    ],
    # 23 typo-filled casual
    [
        ("user", "hey so my sisters name is {name2} and she lives at {address_lower}, i want to send her a birtday parcel but the courier form wants her {id_kind}?? its {id} but is that normal"),
        ("assistant", "Some couriers ask for an ID number for customs when the parcel crosses a border, especially outside the EU. If you're sending to {city} in {country} from abroad, that's probably why. It's normal, but only enter {first2}'s {id_kind} ({id}) on the courier's official site, not in emails."),
        ("user", "ok makes sense. and its fine to write the adress like that, all lowercase?"),
        ("assistant", "Yes, couriers normalise it. Written properly it would be:\n\n{name2}\n{address_lines}"),
    ],
    # 24 JSON payload
    [
        ("user", "my API returns 422 when I send this, what's wrong?\n\n```json\n{{\n  \"customer\": {{\n    \"full_name\": \"{name}\",\n    \"email\": \"{email}\",\n    \"billing_address\": \"{address}\",\n    \"document\": {{\"type\": \"{id_kind}\", \"number\": \"{id}\"}}\n  }},\n  \"payment\": {{\"card_number\": \"{card}\", \"cvc\": 123,}}\n}}\n```"),
        ("assistant", "There's a trailing comma after `\"cvc\": 123`, which makes the JSON invalid. Remove it:\n\n```json\n\"payment\": {{\"card_number\": \"{card}\", \"cvc\": \"123\"}}\n```\n\nAlso many APIs expect `cvc` as a string. If it still fails, check whether `billing_address` should be an object, e.g. `{{\"line1\": \"{street}\", \"postal_code\": \"{post}\", \"city\": \"{city}\"}}`."),
    ],
]


HELD_OUT_13_TEMPLATES: list[list[tuple[str, str]]] = [
    # 1 landlord deposit letter, casual
    [
        ("user", "hey can u help me write a letter to my landlord asking for my deposit back?? moved out 3 weeks ago and nothing. im {name}, the flat was {address}. he can send it to my account {iban}"),
        ("assistant", "Of course. Here's a firm but polite draft:\n\n{name}\n{address_lines}\n\nDear Mr {surname},\n\nRe: Return of tenancy deposit\n\nI vacated the property at {street}, {city} three weeks ago and returned all keys. I kindly ask that the deposit be transferred to my account, IBAN {iban}, within 14 days.\n\nKind regards,\n{name}\n\nWant me to add the move-out date or mention the inventory check?"),
        ("user", "wait his surname isnt {surname} thats MY surname lol. his name is {name2}"),
        ("assistant", "Ha, my mistake! Swap the greeting to \"Dear {name2},\" and keep your own name, {name}, at the bottom. Everything else stays the same."),
    ],
    # 2 German gym cancellation
    [
        ("user", "Hallo! Ich will meinen Fitnessstudio-Vertrag kündigen, kannst du mir ein Schreiben aufsetzen? Ich heiße {name}, wohne in der {street}, {post} {city}. Mitgliedsnummer ist {id}. Die wollen das schriftlich per Mail an kuendigung@fitwerk.example"),
        ("assistant", "Gern, hier ein Entwurf:\n\nBetreff: Kündigung meiner Mitgliedschaft – Mitgliedsnr. {id}\n\nSehr geehrte Damen und Herren,\n\nhiermit kündige ich meinen Vertrag fristgerecht zum nächstmöglichen Zeitpunkt. Bitte bestätigen Sie mir die Kündigung schriftlich an {email}.\n\nMit freundlichen Grüßen\n{name}\n{address_lines}"),
        ("user", "perfekt danke, aber schreib bitte noch rein dass sie mich unter {phone} erreichen können, falls was ist"),
        ("assistant", "Klar – füge vor dem Gruß einfach ein: „Für Rückfragen erreichen Sie mich telefonisch unter {phone}.“"),
    ],
    # 3 python + .env
    [
        ("user", "why does this keep saying auth failed?? \n\n.env:\n```\nDB_HOST=localhost\nDB_USER={first_lower}\nDB_PASSWORD={password}\nSMTP_USER={email}\n```\n\n```python\nimport os\nfrom dotenv import load_dotenv\nimport psycopg2\n\nload_dotenv()\nconn = psycopg2.connect(host=os.getenv('DB_HOST'), user=os.getenv('DB_USER'), password=os.getenv('DB_PASS'))\nprint(f\"connected as {{conn.info.user}}\")\n```"),
        ("assistant", "Your `.env` defines `DB_PASSWORD`, but the code reads `os.getenv('DB_PASS')`, so it gets `None`. Change it to:\n\n```python\npassword=os.getenv('DB_PASSWORD')\n```\n\nAlso: you just pasted the real value `{password}` for user `{first_lower}`, so I'd rotate that password and make sure `.env` is in your `.gitignore`."),
        ("user", "ugh ok. its only local but fine, changed it"),
    ],
    # 4 slack transcript summary
    [
        ("user", "summarize this thread for me pls, i was out\n\n[09:14] {name}: morning all, who has the guest wifi pw for the offsite?\n[09:15] {name2}: it's {password} , same as last year lol\n[09:15] {first3}: pls don't post that here 🙃\n[09:17] {name}: too late, thx {first2}!\n[09:31] {name2}: also whoever booked the venue, invoice goes to {email}\n[09:40] {first3}: ill call them, number is {phone}"),
        ("assistant", "Quick summary:\n- {first} asked for the offsite guest Wi-Fi password; {first2} posted it in the channel (and {first3} pointed out it shouldn't be shared there).\n- The venue invoice should be sent to {email}.\n- {first3} will call the venue at {phone}.\n\nMight be worth changing the Wi-Fi password since it's now in the channel history."),
    ],
    # 5 French CV
    [
        ("user", "Salut, tu peux améliorer mon CV ? c'est pour un poste de chargée de projet\n\n# {name}\n{street} – {post} {city}\n📞 {phone} | ✉️ {email}\n\n## Expérience\n- 2019-2023 : assistante de projet chez Lumen SAS, {city}\n- 2017-2019 : stage, mairie de {city}\n\n## Langues\nfrançais, anglais (B2), espagnol"),
        ("assistant", "Voici une version plus percutante :\n\n# {name}\n**Chargée de projet** · {address} · {phone} · {email}\n\n## Expérience professionnelle\n**Assistante de projet — Lumen SAS, {city}** (2019–2023)\n- Coordination de 6 projets simultanés, suivi budgétaire et reporting\n\n**Stagiaire — Mairie de {city}** (2017–2019)\n\n## Langues\nFrançais (natif) · Anglais (B2) · Espagnol (intermédiaire)\n\nTu veux que j'ajoute une accroche en haut ?"),
    ],
    # 6 SQL insert error
    [
        ("user", "getting ERROR: syntax error at or near \"Connor\" on this, whats wrong\n\n```sql\nINSERT INTO customers (id, full_name, email, card_number, phone)\nVALUES\n  (101, '{name}', '{email}', '{card}', '{phone}'),\n  (102, 'Ciara O'Connor', 'ciara.oc@example.com', NULL, NULL);\n```"),
        ("assistant", "The apostrophe in O'Connor closes the string early. Escape it by doubling it:\n\n```sql\nINSERT INTO customers (id, full_name, email, card_number, phone)\nVALUES\n  (101, '{name}', '{email}', '{card}', '{phone}'),\n  (102, 'Ciara O''Connor', 'ciara.oc@example.com', NULL, NULL);\n```\n\nSide note: storing raw card numbers like `{card}` in a plain column is a PCI-DSS problem — better to store only a token from your payment provider plus the last 4 digits."),
    ],
    # 7 Spanish form, dictated numbers
    [
        ("user", "oye necesito rellenar un formulario del ayuntamiento y no entiendo qué poner en cada campo. me llamo {name}, mi número es el {phone} (el móvil, no el fijo), y el {id_kind} es {id}. vivo en {address}"),
        ("assistant", "¡Claro! Según lo que me dices, quedaría así:\n\n- Nombre y apellidos: {name}\n- Domicilio: {street}\n- Código postal / Municipio: {post} {city}\n- Teléfono de contacto: {phone}\n- Documento ({id_kind}): {id}\n\n¿El formulario te pide también correo electrónico?"),
        ("user", "si, pon {email}. y gracias!!"),
    ],
    # 8 Polish minutes -> English
    [
        ("user", "Przetłumacz proszę na angielski:\n\nProtokół ze spotkania zespołu, 14.03\nObecni: {name}, {name2}, {first3}\n1. {first} przedstawił harmonogram wdrożenia.\n2. {first2} zgłosiła, że klient ({email}) czeka na ofertę do piątku.\n3. Następne spotkanie u {first2} w biurze: {street}, {city}.\nProtokołował(a): {first3}"),
        ("assistant", "Team meeting minutes, 14 March\nPresent: {name}, {name2}, {first3}\n1. {first} presented the rollout schedule.\n2. {first2} reported that the client ({email}) is expecting the quote by Friday.\n3. Next meeting at {first2}'s office: {street}, {city}.\nMinutes taken by: {first3}"),
    ],
    # 9 Kubernetes secret
    [
        ("user", "is this k8s secret right? pod says CreateContainerConfigError\n\n```yaml\napiVersion: v1\nkind: Secret\nmetadata:\n  name: smtp-creds\n  labels:\n    owner: {first_lower}\ntype: Opaque\nstringData:\n  SMTP_USERNAME: {email}\n  SMTP_PASSWORD: {password}\n---\n# deployment snippet\nenv:\n  - name: SMTP_PASSWORD\n    valueFrom:\n      secretKeyRef:\n        name: smtp-credentials\n        key: SMTP_PASSWORD\n```"),
        ("assistant", "The Secret is named `smtp-creds` but the deployment references `smtp-credentials`, so the kubelet can't find it. Make the names match:\n\n```yaml\n      secretKeyRef:\n        name: smtp-creds\n        key: SMTP_PASSWORD\n```\n\nThe `stringData` part with `{email}` / `{password}` is fine syntactically, but don't commit that file to git — use sealed-secrets or an external secret store instead."),
    ],
    # 10 forwarded email
    [
        ("user", "how should i reply to this? short and polite\n\n---------- Forwarded message ---------\nFrom: {name} <{email}>\nDate: Tue, 5 Mar 2024 at 16:02\nSubject: Re: sofa delivery\nTo: {name2}\n\nHi {first2},\nthe courier tried twice and nobody was home. Can you confirm the address again and a phone number the driver can call?\n\nBest,\n{first}\n--\n{name} | Customer Care\nT: {phone}\n{address_qq}"),
        ("assistant", "Here's a short reply:\n\nHi {first},\n\nSorry about the missed deliveries! The address is correct as on the order. The driver can reach me on my mobile — I'll be home all day Thursday if that works for another attempt.\n\nThanks,\n{first2}\n\nJust add your own mobile number where I mentioned it."),
        ("user", "thx. btw whats with the ??? in their signature"),
        ("assistant", "That's just how your mail client rendered the line breaks from their signature — \"{address_qq}\" is their office address spread over three lines that got flattened on export."),
    ],
    # 11 Italian bank transfer
    [
        ("user", "ciao, devo fare un bonifico a {name2} per l'affitto di marzo, IBAN {iban}. se lo faccio oggi arriva entro venerdì? e cosa scrivo nella causale"),
        ("assistant", "Un bonifico SEPA ordinario disposto oggi di solito arriva entro 1 giorno lavorativo, quindi dovrebbe essere accreditato entro venerdì. Se vuoi essere sicuro, usa il bonifico istantaneo.\n\nPer la causale puoi scrivere ad esempio:\n\"Canone di locazione marzo 2024 – {street}, {city} – {name}\"\n\nControlla bene che l'IBAN {iban} sia intestato proprio a {name2}."),
        ("user", "ok grazie, metto il mio nome {name} sì"),
    ],
    # 12 Dutch router, password phrased indirectly
    [
        ("user", "hoi, mijn laptop wil niet meer verbinden met de wifi sinds ik het wachtwoord heb veranderd. ik heb het ingesteld op {password} via de app van ziggo, ingelogd met {email}. wat kan ik doen?"),
        ("assistant", "Dat komt vaak doordat je laptop nog het oude wachtwoord onthoudt. Probeer dit:\n\n1. Ga naar Instellingen → Netwerk → Wifi → Bekende netwerken beheren.\n2. Kies je netwerk en klik op **Vergeten**.\n3. Verbind opnieuw en voer `{password}` in (let op hoofdletters).\n\nWerkt het nog steeds niet, herstart dan de router via de app met je account {email}."),
        ("user", "het werkt!! dankjewel"),
    ],
    # 13 CSV dedupe
    [
        ("user", "can you dedupe this list and fix the capitalisation? it's exported from our signup form\n\n```csv\nname,email,phone,city\n{name},{email},{phone},{city}\n{name_lower},{email},{phone},{city}\n{name2},,\"{phone}\",\n{first3} ,info@example.org,,{city}\n```"),
        ("assistant", "Here's the cleaned version — rows 1 and 2 were the same person ({name}), so I merged them:\n\n```csv\nname,email,phone,city\n{name},{email},{phone},{city}\n{name2},,{phone},\n{first3},info@example.org,,{city}\n```\n\nNote that {name2}'s row has the same phone number as {first} — might be a typo in the form."),
    ],
    # 14 Portuguese card declined
    [
        ("system", "You are a helpful assistant for a Brazilian online store. Answer in the customer's language."),
        ("user", "oi, tentei comprar o fone e meu cartão {card} foi recusado 3 vezes!! o CPF que usei foi {id}, nome {name}. o que tá acontecendo?"),
        ("assistant", "Oi, {first}! Sinto muito pelo transtorno. Por segurança, não compartilhe o número completo do cartão aqui no chat. As causas mais comuns de recusa são: limite insuficiente, dados do titular diferentes dos cadastrados no banco, ou bloqueio preventivo para compras online. Recomendo ligar para o banco emissor e confirmar se a compra foi bloqueada. Quer que eu gere um link de pagamento via Pix enquanto isso?"),
        ("user", "quero sim, manda pro meu email {email}"),
    ],
    # 15 Czech complaint
    [
        ("user", "Ahoj, potřebuju napsat reklamaci. Bydlím na adrese {address} a už dva týdny mi nejde internet. Smlouva je na jméno {name}, číslo zákaznického účtu {id}. Volala jsem jim z čísla {phone} asi pětkrát."),
        ("assistant", "Jasně, tady je návrh:\n\nVěc: Reklamace nefunkčního připojení – zákaznický účet {id}\n\nVážení,\n\nod 1. 3. nefunguje na adrese {street}, {post} {city} internetové připojení. Závadu jsem opakovaně nahlásila telefonicky z čísla {phone}, dosud bez výsledku. Žádám o okamžité odstranění závady a poměrné snížení měsíčního poplatku.\n\nS pozdravem\n{name}"),
    ],
    # 16 Hungarian, id expired
    [
        ("user", "szia! lejárt az {id_kind}-om ({id}), és jövő hónapban utazom. {name} vagyok, a {city}i kormányablakba kell mennem? email címem {email}, ha időpontot kell foglalni"),
        ("assistant", "Szia {first}! Igen, a lejárt okmány ({id_kind}, {id}) cseréjét bármelyik kormányablakban intézheted, nem csak {city}ban. Időpontot az online időpontfoglalóban tudsz kérni, a visszaigazolás a megadott címre ({email}) érkezik. Vidd magaddal a régi okmányt és a lakcímkártyádat is."),
    ],
    # 17 Danish moving
    [
        ("user", "hej, jeg flytter til {street} i {city} d. 1. maj. kan du hjælpe mig med en besked til min nye nabo? jeg hedder {first} og mit nummer er {phone}"),
        ("assistant", "Selvfølgelig! Her er et forslag:\n\nHej nabo 👋\n\nJeg hedder {first} og flytter ind på {street} den 1. maj. Der kommer nok lidt larm og en flyttebil den dag – undskyld på forhånd! Skriv endelig, hvis der er noget: {phone}.\n\nVenlig hilsen\n{first}"),
        ("user", "super. skal jeg skrive mit efternavn {surname} også?"),
        ("assistant", "Det er helt op til dig — \"{first} {surname}\" virker lidt mere formelt, men fornavnet er fint til en nabohilsen."),
    ],
    # 18 Terraform
    [
        ("user", "terraform plan complains `Invalid default value for variable`. what's up\n\n```hcl\nvariable \"db_password\" {{\n  type      = string\n  default   = {password}\n  sensitive = true\n}}\n\nresource \"aws_db_instance\" \"main\" {{\n  identifier = \"app-db\"\n  username   = \"admin\"\n  password   = var.db_password\n  tags = {{\n    Owner   = \"{email}\"\n    Contact = \"{name}\"\n  }}\n}}\n```"),
        ("assistant", "String defaults in HCL must be quoted. Change it to:\n\n```hcl\nvariable \"db_password\" {{\n  type      = string\n  default   = \"{password}\"\n  sensitive = true\n}}\n```\n\nBetter still, drop the default entirely and pass it via `TF_VAR_db_password` or a secrets manager, so the password never sits in your repo next to the `Owner = \"{email}\"` tag."),
    ],
    # 19 git config
    [
        ("user", "my commits show up as the wrong person on github, my gitconfig says\n\n```\n[user]\n\tname = {name}\n\temail = {email}\n[credential]\n\thelper = store\n```\nbut it shows {name2}??"),
        ("assistant", "The global config looks right, so the repo probably has a local override. Check with:\n\n```bash\ngit config --show-origin --get-all user.name\n```\n\nIf it shows {name2} from `.git/config`, fix it with:\n\n```bash\ngit config user.name \"{name}\"\ngit config user.email \"{email}\"\n```\n\nAlso make sure {email} is added and verified under GitHub → Settings → Emails, otherwise the commits won't be linked to your account."),
    ],
    # 20 crontab + shell
    [
        ("user", "my backup cron never runs, can you check?\n\n```\n# m h dom mon dow command\n30 2 * * * /home/{first_lower}/bin/backup.sh >> /var/log/backup.log 2>&1\n```\n\nbackup.sh:\n```bash\n#!/bin/bash\nDATE=$(date +%F)\ntar czf /tmp/backup-${{DATE}}.tgz ~/docs\ncurl -u {first_lower}:{password} -T /tmp/backup-${{DATE}}.tgz https://nas.local/upload/\necho \"backup done\" | mail -s \"backup ${{DATE}}\" {email}\n```"),
        ("assistant", "Two likely culprits:\n\n1. The script probably isn't executable: `chmod +x /home/{first_lower}/bin/backup.sh`\n2. `~` inside cron may not expand as you expect — use the absolute path `/home/{first_lower}/docs`.\n\nAlso, having `{password}` in plain text on the curl line means it shows up in `ps` output. Put it in `~/.netrc` (chmod 600) and use `curl --netrc` instead."),
    ],
    # 21 log lines
    [
        ("user", "our payment logs look like this, is this a problem for compliance?\n\n```\n2024-03-12T10:22:01.114Z INFO  [checkout] payment accepted user={email} card={card} amount=49.90 EUR\n2024-03-12T10:22:01.120Z DEBUG [checkout] billing_address=\"{address}\" phone={phone}\n2024-03-12T10:23:47.009Z WARN  [refund] iban={iban} holder=\"{name}\" status=PENDING\n```"),
        ("assistant", "Yes — that's a real problem. Full PANs like `{card}` must never be written to logs under PCI-DSS, and under GDPR the email, phone, address and IBAN are personal data that shouldn't sit in DEBUG logs either.\n\nSuggested fix: mask before logging, e.g. `card=****{{last4}}`, hash the user id instead of logging `{email}`, and drop `billing_address`/`iban` from log lines entirely. Then purge the existing log files that contain them."),
    ],
    # 22 party planning, possessives
    [
        ("user", "ok so {first}'s 30th is next saturday and {first2}'s is the week after — should we just do one party?? we could do it at {name}'s place, {address}, it's big enough. {first3} said she'd bring the cake"),
        ("assistant", "A joint party sounds fun and saves everyone a weekend! A few ideas:\n- Pick the Saturday in between so neither {first} nor {first2} feels their birthday got moved.\n- Confirm with {name} that hosting at {street} is okay for ~20 people.\n- Ask {first3} to get one cake with both names on it.\n\nWant me to draft a group invite?"),
        ("user", "yes pls, and put that ppl can text me at {phone} to rsvp"),
        ("assistant", "Here you go:\n\n🎉 Double birthday! {first} & {first2} are turning 30 🎉\nSaturday, 8 pm at {address}\nCake courtesy of {first3} 🎂\nRSVP by text to {phone}"),
    ],
    # 23 phone/card dictated, voicemail script
    [
        ("system", "You are a concise writing assistant."),
        ("user", "need a voicemail script for calling my bank back. they said to quote the card (it's {card}, exp 08/27) and leave a callback number. my number's {phone} – thats zero first, not the letter o. also my name {name}"),
        ("assistant", "Here's a short script:\n\n\"Hello, this is {name} returning your call about a possible fraud alert on my card. Please call me back on {phone} — again, {phone}. Thank you.\"\n\nI'd leave out the full card number ({card}) from a voicemail; the bank will verify you when they call back. If they insist, the last four digits are enough."),
    ],
    # 24 order JSON + export with ??? address
    [
        ("user", "ich muss diese bestellung per API nachbauen, kannst du mir das JSON machen? aus dem shop-export:\n\nKunde: {name}\nLieferadresse: {address_qq}\nE-Mail: {email} / Tel. {phone}\nZahlung: Lastschrift, IBAN {iban}"),
        ("assistant", "Klar, so sähe der Request-Body aus:\n\n```json\n{{\n  \"customer\": {{\n    \"name\": \"{name}\",\n    \"email\": \"{email}\",\n    \"phone\": \"{phone}\"\n  }},\n  \"shipping_address\": {{\n    \"street\": \"{street}\",\n    \"postal_code\": \"{post}\",\n    \"city\": \"{city}\",\n    \"country\": \"{country}\"\n  }},\n  \"payment\": {{\n    \"method\": \"sepa_debit\",\n    \"iban\": \"{iban}\",\n    \"account_holder\": \"{name}\"\n  }}\n}}\n```\n\nDie \"???\" im Export sind übrigens nur verlorene Zeilenumbrüche – ich habe die Adresse in Straße, PLZ, Ort und Land aufgeteilt."),
    ],
]


HELD_OUT_14_TEMPLATES: list[list[tuple[str, str]]] = [
    # 1 landlord, casual
    [
        ("user", "hey can u help me write a msg to my landlord, boiler broke again. im {name}, flat is at {street}, {city}. he never answers email so ill text him, my number if he wants to call back is {phone}"),
        ("assistant", "Sure! Here's a short text you can send:\n\n\"Hi, this is {name} from {street}. The boiler has stopped working again and there's no hot water. Could you arrange a repair this week? You can reach me on {phone} any time. Thanks!\""),
        ("user", "perfect. also remind him rent goes from my account {iban} on the 1st so he cant say i didnt pay lol"),
        ("assistant", "Add this line at the end: \"Just a reminder that rent is paid by standing order from {iban} on the 1st of each month, so that's all up to date.\""),
    ],
    # 2 German complaint
    [
        ("user", "Kannst du mir eine Beschwerde an meinen Internetanbieter formulieren? Seit drei Wochen kein Internet. Kundennummer {id}, Absender:\n{name}\n{address_lines}\nAntwort bitte an {email}"),
        ("assistant", "Gerne, hier ein Entwurf:\n\n{name}\n{address_lines}\n\nBetreff: Störung seit drei Wochen – Kundennummer {id}\n\nSehr geehrte Damen und Herren,\n\nseit nunmehr drei Wochen ist mein Internetanschluss nicht nutzbar. Trotz mehrerer Anrufe wurde die Störung nicht behoben. Ich fordere Sie auf, den Fehler bis spätestens zum Monatsende zu beseitigen, und behalte mir eine Minderung der Grundgebühr vor.\n\nBitte antworten Sie schriftlich an {email}.\n\nMit freundlichen Grüßen\n{name}"),
        ("user", "Danke! Kann man noch erwähnen, dass {first2} von der Hotline mir die Gutschrift versprochen hat?"),
        ("assistant", "Klar, füge nach dem ersten Absatz ein: \"Ihr Mitarbeiter, Herr/Frau {first2}, hat mir am Telefon bereits eine Gutschrift zugesagt.\""),
    ],
    # 3 Python code
    [
        ("user", "why does this throw KeyError?\n\n```python\nuser = {{\n    \"name\": \"{name}\",\n    \"email\": \"{email}\",\n    \"phone\": \"{phone}\",\n}}\nprint(f\"{{user['Name']}} <{{user['email']}}>\")\n```"),
        ("assistant", "Dictionary keys are case-sensitive. You defined `\"name\"` but access `user['Name']`. Fix:\n\n```python\nprint(f\"{{user['name']}} <{{user['email']}}>\")\n```\n\nThat prints `{name} <{email}>`."),
        ("user", "ah ok. and if i want to mask the card too, like user['card'] = '{card}' -> only last 4?"),
        ("assistant", "Use slicing:\n\n```python\ncard = '{card}'.replace(' ', '')\nmasked = '*' * (len(card) - 4) + card[-4:]\n```"),
    ],
    # 4 Spanish travel booking
    [
        ("user", "Hola, necesito rellenar el formulario de la aerolínea para dos pasajeros: yo, {name}, y mi pareja {name2}. Mi número de pasaporte es {id}. ¿Qué pongo en \"contacto de emergencia\"?"),
        ("assistant", "En \"contacto de emergencia\" debes poner a alguien que no viaje con vosotros. Para el resto:\n\n- Pasajero 1: {name}, pasaporte {id}\n- Pasajero 2: {name2}\n\n¿Quieres que prepare el texto para el contacto?"),
        ("user", "si, pon a mi madre, el tel es el {phone}, se llama igual de apellido, {surname}"),
        ("assistant", "Contacto de emergencia: Sra. {surname}, teléfono {phone}, relación: madre."),
    ],
    # 5 family group chat export
    [
        ("user", "summarise this family chat for me pls, i missed everything\n\n[18:02] {first}: who's bringing the cake sunday\n[18:03] {first2}: me!! also party is at {first3}'s now not ours\n[18:03] {first2}: {address}\n[18:05] {first}: wifi there?\n[18:06] {first3}: yes it's {password} lol dont judge\n[18:10] {first}: 👍"),
        ("assistant", "Summary:\n- {first2} is bringing the cake on Sunday.\n- The party moved to {first3}'s place: {address}.\n- {first3} shared the wifi password ({password}).\n- {first} confirmed."),
    ],
    # 6 job application
    [
        ("user", "Write a cover letter header for me. {name}, {address_lines}, {email}, mobile {phone}. Applying for junior data analyst at a logistics firm in {city}."),
        ("assistant", "{name}\n{address_lines}\n{email} · {phone}\n\nDear Hiring Manager,\n\nI am writing to apply for the Junior Data Analyst position at your {city} office. With a strong foundation in SQL and Python and a genuine interest in supply-chain optimisation, I believe I can contribute from day one...\n\nKind regards,\n{name}"),
        ("user", "can you sign it just with first name? they're informal apparently"),
        ("assistant", "Sure — replace the sign-off with:\n\nBest,\n{first}"),
    ],
    # 7 CSV cleaning
    [
        ("user", "this export from our old CRM is a mess, the address column has ??? everywhere. how do i fix in excel?\n\nname;email;iban;address\n{name};{email};{iban};{address_qq}\n{name2};;;"),
        ("assistant", "The `???` are lost line breaks. In Excel: select the address column, Ctrl+H, find `???`, replace with Ctrl+J (line break) or with \", \" for a single line. Row 1 would become:\n\n{address_lines}\n\nNote row 2 ({name2}) has no email or IBAN — you may want to flag it."),
        ("user", "thx. and {name}'s iban has spaces in some rows, is that fine for import?"),
        ("assistant", "Most banking imports expect no spaces. Use `=SUBSTITUTE(C2;\" \";\"\")` so {iban} is stored in its compact form."),
    ],
    # 8 French medical admin
    [
        ("user", "Bonjour, je dois écrire à la CPAM pour un remboursement oublié. Je m'appelle {name}, numéro de sécu {id}, j'habite {address}. Tu peux m'aider ?"),
        ("assistant", "Bien sûr. Voici un modèle :\n\n{name}\n{address}\nN° de sécurité sociale : {id}\n\nObjet : Demande de remboursement\n\nMadame, Monsieur,\n\nJe me permets de vous signaler que ma consultation du mois dernier n'a pas encore été remboursée. Vous trouverez ci-joint la feuille de soins.\n\nJe reste joignable au besoin.\n\nCordialement,\n{name}"),
        ("user", "ajoute mon tel stp : {phone}"),
        ("assistant", "Remplace « Je reste joignable au besoin » par « Je reste joignable au {phone} si besoin. »"),
    ],
    # 9 wedding planning
    [
        ("user", "{first2} and I are getting married in june!! need help with the RSVP card text. replies should go to {email} or by post to my mum, {name2}, {address}"),
        ("assistant", "Congratulations to you and {first2}! Here's a draft:\n\n\"Kindly reply by 1 May\nemail {email}\nor write to {name2}, {address}\nWe can't wait to celebrate with you!\""),
        ("user", "lovely. can u add that {first3} is doing the playlist so send song requests to them"),
        ("assistant", "Add at the bottom: \"Got a song that'll get you dancing? Send your request to {first3}, our DJ for the night!\""),
    ],
    # 10 YAML config
    [
        ("user", "my docker compose won't connect to postgres, what's wrong\n\n```yaml\nservices:\n  db:\n    image: postgres:16\n    environment:\n      POSTGRES_USER: {first_lower}\n      POSTGRES_PASSWORD: {password}\n  app:\n    environment:\n      DATABASE_URL: postgres://{first_lower}:{password}@localhost:5432/app\n      ADMIN_EMAIL: {email}\n```"),
        ("assistant", "Inside the `app` container, `localhost` refers to the app itself, not the database. Use the service name:\n\n```yaml\nDATABASE_URL: postgres://{first_lower}:{password}@db:5432/app\n```\n\nAlso consider moving the password into an `.env` file rather than committing it."),
    ],
    # 11 Polish school admin
    [
        ("user", "Pomóż mi napisać wiadomość do wychowawczyni. Mój syn {first} jutro nie przyjdzie do szkoły, ma gorączkę. Podpis: {name}, tel. {phone}"),
        ("assistant", "Szanowna Pani,\n\nuprzejmie informuję, że mój syn {first} jutro nie będzie obecny w szkole z powodu gorączki. Proszę o usprawiedliwienie nieobecności.\n\nW razie pytań proszę o kontakt pod numerem {phone}.\n\nZ poważaniem\n{name}"),
        ("user", "super, dopisz jeszcze maila {email} bo rzadko odbieram"),
        ("assistant", "Zmień ostatnie zdanie na: „W razie pytań proszę o kontakt mailowy ({email}) lub pod numerem {phone}.”"),
    ],
    # 12 Italian card refund
    [
        ("user", "Ciao, ho pagato due volte lo stesso ordine con la carta {card}. Mi scrivi una mail al negozio? Sono {name}, la mia mail è {email}"),
        ("assistant", "Certo:\n\nOggetto: Doppio addebito ordine\n\nGentile servizio clienti,\n\nvi scrivo perché il mio ordine è stato addebitato due volte sulla carta che termina con le ultime quattro cifre di {card}. Vi chiedo cortesemente di rimborsare l'importo duplicato.\n\nPotete contattarmi a {email}.\n\nCordiali saluti,\n{name}"),
    ],
    # 13 logs
    [
        ("user", "payment webhook keeps failing, here's the log:\n\n2024-03-11T09:14:22Z INFO  checkout start user_email={email} phone=\"{phone}\"\n2024-03-11T09:14:23Z DEBUG tokenize pan={card}\n2024-03-11T09:14:23Z ERROR 402 card_declined customer_ref={id}\n\nwhy declined?"),
        ("assistant", "The 402 `card_declined` comes from the issuer, not your code — the customer {email} needs to contact their bank or use another card. More urgently: you're logging the full card number ({card}) at DEBUG level. That's a PCI-DSS violation; mask it before logging and rotate those logs."),
    ],
    # 14 Dutch tenant
    [
        ("user", "Hoi, kun je een berichtje aan mijn huurder schrijven? De borg komt terug op zijn rekening {iban}. Hij heet {name} en woonde op {address}. Graag wel vriendelijk"),
        ("assistant", "Natuurlijk:\n\nBeste {first},\n\nBedankt voor de prettige huurperiode op {address}. De borg wordt deze week teruggestort op je rekening {iban}. Laat het gerust weten als er nog iets is.\n\nMet vriendelijke groet"),
        ("user", "en zet erbij dat de code van het sleutelkastje {password} is zodat hij de laatste sleutel kan terugleggen"),
        ("assistant", "Voeg toe: \"De laatste sleutel kun je in het sleutelkastje naast de voordeur leggen; de code is {password}.\""),
    ],
    # 15 card dictated, voice-typed
    [
        ("user", "voice typing sorry. the hotel wants my card to hold the room can you format this nicely for the form. card number is {card} expiry oh nine slash twenty seven name on card {name_lower}"),
        ("assistant", "Here's how to fill it in:\n\nCardholder name: {name}\nCard number: {card}\nExpiry: 09/27\n\nDouble-check the number before submitting — voice typing can mishear digits. And only enter it on the hotel's secure booking page, not by email."),
        ("user", "ok and phone is plus... {phone}"),
        ("assistant", "Phone: {phone}"),
    ],
    # 16 Portuguese BR
    [
        ("user", "Oi! Preciso de um e-mail pro condomínio avisando que vou me mudar. Meu nome é {name}, CPF {id}, apartamento na {street}, {city}. Meu zap é {phone}"),
        ("assistant", "Claro! Segue uma sugestão:\n\nAssunto: Aviso de mudança\n\nPrezado síndico,\n\nEu, {name}, CPF {id}, moradora/morador da {street}, informo que deixarei o imóvel no fim do mês. Peço que me indiquem os procedimentos para a vistoria e a entrega das chaves.\n\nFico à disposição pelo WhatsApp {phone}.\n\nAtenciosamente,\n{name}"),
    ],
    # 17 Czech account
    [
        ("user", "Ahoj, potřebuju napsat kolegovi, jak se přihlásit do sdíleného účtu. Účet je na {email} a heslo je {password}. Kolega se jmenuje {name2}."),
        ("assistant", "Ahoj {first2},\n\nposílám přístup ke sdílenému účtu:\n- přihlašovací e-mail: {email}\n- heslo: {password}\n\nPo přihlášení si prosím zapni dvoufázové ověření.\n\nDíky,\n{first}\n\n(Tip: heslo raději pošli jiným kanálem než e-mail.)"),
    ],
    # 18 Hungarian bank transfer
    [
        ("user", "Szia! Segítenél megfogalmazni egy üzenetet? A lakbért erre a számlára kell utalni: {iban}, kedvezményezett {name}. A lakás címe {address}, {country}."),
        ("assistant", "Persze:\n\nKedves Bérlő!\n\nA havi lakbért kérem a következő számlára utalni:\nKedvezményezett: {name}\nSzámlaszám: {iban}\nKözlemény: {address} – bérleti díj\n\nKöszönöm!\n{name}"),
        ("user", "és a telefonszámom: {phone}, azt is írd bele"),
        ("assistant", "A végére: \"Kérdés esetén hívjon nyugodtan: {phone}.\""),
    ],
    # 19 Danish
    [
        ("user", "Hej, kan du skrive en kort besked til naboerne om vores sommerfest? Den holdes hos {first} og {first2} på {street}. Tilmelding til {name} på {phone}."),
        ("assistant", "Selvfølgelig:\n\nKære naboer!\n\nVi holder sommerfest lørdag kl. 15 hos {first} og {first2}, {street}. Tag gerne en ret med til fællesbordet.\n\nTilmelding til {name} på {phone} senest fredag.\n\nVi glæder os til at se jer!"),
    ],
    # 20 SQL
    [
        ("user", "getting a syntax error on this insert, postgres:\n\nINSERT INTO customers (full_name, email, phone, iban)\nVALUES ('{name}', '{email}', {phone}, '{iban}');"),
        ("assistant", "The phone value isn't quoted. Phone numbers contain `+`, spaces or dashes, so store them as text:\n\n```sql\nINSERT INTO customers (full_name, email, phone, iban)\nVALUES ('{name}', '{email}', '{phone}', '{iban}');\n```\n\nAlso, if a surname like {surname} ever contains an apostrophe, use parameterised queries instead of string literals."),
    ],
    # 21 JSON API
    [
        ("user", "the api returns 422 for this body, what field is wrong?\n\n{{\n  \"customer\": {{\"name\": \"{name}\", \"email\": \"{email}\"}},\n  \"billing_address\": \"{address}\",\n  \"payment\": {{\"card_number\": \"{card}\", \"cvc\": 123}}\n}}"),
        ("assistant", "Most payment APIs expect `billing_address` as an object, not a string, and `cvc` as a string. Try:\n\n```json\n{{\n  \"customer\": {{\"name\": \"{name}\", \"email\": \"{email}\"}},\n  \"billing_address\": {{\"line1\": \"{street}\", \"postal_code\": \"{post}\", \"city\": \"{city}\", \"country\": \"{country}\"}},\n  \"payment\": {{\"card_number\": \"{card}\", \"cvc\": \"123\"}}\n}}\n```"),
    ],
    # 22 system + support
    [
        ("system", "You are a helpful assistant for a small insurance broker. Be concise and polite."),
        ("user", "Client {name} called, lost their wallet. Need to update their file: new {id_kind} is {id}, new email {email}. Draft a confirmation to send them."),
        ("assistant", "Dear {name},\n\nThank you for your call today. We have updated your file as follows:\n\n- {id_kind}: {id}\n- Email: {email}\n\nIf any of these details are incorrect, please let us know. We're sorry to hear about your wallet.\n\nKind regards"),
        ("user", "add that {first2} {surname}, their spouse, is still listed as second policyholder"),
        ("assistant", "Add before the sign-off: \"{first2} {surname} remains listed as the second policyholder on your policy.\""),
    ],
    # 23 lower-case password reset
    [
        ("user", "i cant log into my uni portal. username is {first_lower}.{surname} and i tried {password} like 5 times now its locked. what do i tell IT"),
        ("assistant", "Send IT something like:\n\n\"Hi, my student account ({first_lower}.{surname}) got locked after several failed logins. Could you unlock it and send a reset link to {email}? Thanks, {name}\"\n\nDon't include your old password in the email — IT will never need it."),
        ("user", "oh wait {email} is right yes. also my student id is {id} if they need it"),
        ("assistant", "Good idea — add \"My student ID is {id}.\" right after your username."),
    ],
    # 24 party list
    [
        ("user", "make a nice checklist for {first3}'s 40th surprise party:\n- venue: the back room at the pub, {address_lower}\n- {name} does decorations\n- {name2} handles the cake, call her {phone}\n- guests arrive 7pm"),
        ("assistant", "🎉 {first3}'s 40th – Surprise Party Checklist\n\n☐ Venue confirmed: back room, {address}\n☐ Decorations – {name}\n☐ Cake – {name2} ({phone})\n☐ Guests arrive 7:00 pm sharp\n☐ Someone keeps {first3} busy until 7:30!"),
    ],
]


# Held-out chat templates (written blind). str.format slots; literal braces doubled.

HELD_OUT_15_TEMPLATES: list[list[tuple[str, str]]] = [
    # 1 insurance claim, English prose
    [
        ("user", "hi, can you help me write an email to my home insurer? a pipe burst in the kitchen on saturday night. policy is in my name, {name}, and the house is at {address}. they'll probably want a number to call, mine is {phone}"),
        ("assistant", "Of course. Here's a draft you can adapt:\n\nSubject: Claim notification – water damage at {street}\n\nDear Claims Team,\n\nI am writing to report water damage at my property, {address}, caused by a burst pipe in the kitchen on Saturday night. The policy holder is {name}.\n\nPlease contact me on {phone} to arrange an assessor's visit.\n\nKind regards,\n{name}"),
        ("user", "perfect. can you add that my neighbour {name2} saw the water coming through the wall and can confirm the time"),
        ("assistant", "Sure, add this paragraph after the first one:\n\n\"My neighbour, {name2}, noticed water coming through the shared wall at around 11 pm and is happy to confirm this if needed.\""),
    ],
    # 2 bank dispute, German
    [
        ("user", "Hallo! Ich habe eine Abbuchung über 249,99 € auf meiner Kreditkarte gefunden, die ich nicht gemacht habe. Die Karte ist {card}, das Konto läuft über {iban}. Kannst du mir einen Widerspruch an die Bank formulieren? Ich heiße {name}."),
        ("assistant", "Gerne, hier ein Entwurf:\n\nSehr geehrte Damen und Herren,\n\nhiermit widerspreche ich der Belastung in Höhe von 249,99 € auf meiner Kreditkarte mit der Nummer {card}. Ich habe diese Zahlung weder veranlasst noch autorisiert. Bitte erstatten Sie den Betrag auf mein Konto {iban} zurück und sperren Sie die Karte vorsorglich.\n\nMit freundlichen Grüßen\n{name}"),
        ("user", "danke!! soll ich die kartennummer wirklich komplett reinschreiben oder nur die letzten 4?"),
        ("assistant", "Viele Banken empfehlen, in E-Mails nur die letzten vier Ziffern zu nennen. Wenn du den Brief per Post oder über das Online-Banking-Postfach schickst, ist die volle Nummer aber in Ordnung."),
    ],
    # 3 visa form, French
    [
        ("user", "Bonjour, je remplis le formulaire de visa pour le Canada et je ne sais pas quoi mettre dans « adresse de résidence actuelle ». J'habite {street}, {post} {city}, {country}. Mon numéro de passeport c'est le {id}."),
        ("assistant", "Bonjour ! Dans ce champ, indiquez simplement votre adresse complète telle qu'elle figure sur vos justificatifs :\n\n{address_lines}\n\nPour le champ « numéro de passeport », recopiez exactement {id}, sans espaces ni tirets supplémentaires."),
        ("user", "ok et pour le contact d'urgence je mets ma sœur {name2}, tel {phone}, ça marche?"),
        ("assistant", "Oui, c'est parfait : Contact d'urgence – {name2}, téléphone {phone}. Vérifiez juste que le numéro inclut l'indicatif du pays."),
    ],
    # 4 python code with config dict
    [
        ("user", "why does this fail with SMTPAuthenticationError?\n\n```python\nimport smtplib\n\nCONFIG = {{\n    \"host\": \"smtp.gmail.com\",\n    \"port\": 587,\n    \"user\": \"{email}\",\n    \"pass\": \"{password}\",\n}}\n\nwith smtplib.SMTP(CONFIG[\"host\"], CONFIG[\"port\"]) as s:\n    s.login(CONFIG[\"user\"], CONFIG[\"pass\"])\n```"),
        ("assistant", "You're never calling `starttls()` before `login()`, and Gmail also rejects your normal account password for SMTP. Try:\n\n```python\nwith smtplib.SMTP(CONFIG[\"host\"], CONFIG[\"port\"]) as s:\n    s.starttls()\n    s.login(CONFIG[\"user\"], CONFIG[\"pass\"])\n```\n\nAnd replace `{password}` with an App Password generated in your Google account for `{email}`. Also, don't keep the secret in source — read it from an environment variable instead."),
    ],
    # 5 Slack-like export with address_qq
    [
        ("user", "[10:42] {first}: can someone check where the courier should deliver the monitors?\n[10:43] {first2}: from the order sheet: {address_qq}\n[10:43] {first2}: contact {name}, {phone}\n\nsummarize this thread for the ops channel pls"),
        ("assistant", "Summary: {first} asked for the delivery location of the monitors. {first2} confirmed the address from the order sheet:\n\n{address_lines}\n\nOn-site contact: {name}, {phone}."),
    ],
    # 6 school enrolment, Spanish
    [
        ("user", "hola, tengo que rellenar la matrícula del colegio de mi hijo y me piden los datos del tutor legal. ¿me ayudas a ordenarlos? soy {name}, vivimos en {address}, mi correo es {email} y el móvil {phone}"),
        ("assistant", "¡Claro! Así quedaría la sección del tutor legal:\n\n- Nombre y apellidos: {name}\n- Domicilio: {address}\n- Correo electrónico: {email}\n- Teléfono móvil: {phone}\n\n¿Quieres que prepare también los datos del alumno?"),
        ("user", "si, se llama {first3} {surname}, y el dni mio es {id} por si lo piden"),
        ("assistant", "Perfecto. Datos del alumno: {first3} {surname}, con domicilio en {address}. En el apartado del tutor añade el DNI: {id}."),
    ],
    # 7 doctor appointment, Italian
    [
        ("user", "Ciao, devo scrivere allo studio medico per spostare la visita di mia madre. Lei si chiama {name}, il codice fiscale è {id}. Il mio numero è {phone}, se serve."),
        ("assistant", "Ecco una proposta:\n\nGentile segreteria,\n\nvi scrivo per chiedere di spostare la visita prenotata a nome di {name} (codice fiscale {id}). Siamo disponibili qualsiasi mattina della prossima settimana. Potete contattarmi al {phone}.\n\nGrazie e cordiali saluti,\n{first2}"),
        ("user", "grazie, mettici anche la mail {email} che la controllo più spesso"),
        ("assistant", "Certo, aggiungi alla fine: \"In alternativa potete scrivermi a {email}.\""),
    ],
    # 8 car sale, Polish
    [
        ("user", "Cześć, sprzedaję auto i potrzebuję umowy kupna-sprzedaży. Sprzedający: {name}, zam. {address}. Kupujący: {name2}. Płatność przelewem na konto {iban}."),
        ("assistant", "Jasne, oto szkic:\n\nUMOWA KUPNA-SPRZEDAŻY SAMOCHODU\n\nSprzedający: {name}, zamieszkały/a: {address}\nKupujący: {name2}\n\n§1 Sprzedający oświadcza, że jest właścicielem pojazdu...\n§3 Kupujący zapłaci cenę przelewem na rachunek nr {iban} w terminie 3 dni od podpisania umowy.\n\nPodpisy: ____________ ({name})   ____________ ({name2})"),
        ("user", "a gdzie wpisać numer dowodu osobistego? mój to {id}"),
        ("assistant", "Dopisz go przy danych sprzedającego: \"{name}, legitymujący/a się dowodem osobistym nr {id}\"."),
    ],
    # 9 rental listing, Dutch
    [
        ("user", "Kun je een advertentie schrijven voor mijn appartement? Het is een tweekamerappartement aan de {street} in {city}, 65 m2, €1.250 per maand. Geïnteresseerden mogen mailen naar {email} of bellen naar {phone}."),
        ("assistant", "Natuurlijk! Hier is een voorstel:\n\nTe huur: licht tweekamerappartement in {city}\n\nAan de {street} ({post} {city}) komt per 1 maart een ruim appartement van 65 m² vrij. Huurprijs €1.250 per maand, exclusief G/W/E.\n\nInteresse? Mail naar {email} of bel {phone} voor een bezichtiging."),
        ("user", "top, maar zet er maar bij dat je naar {first} moet vragen"),
        ("assistant", "Aangepast: \"Interesse? Mail naar {email} of bel {phone} en vraag naar {first}.\""),
    ],
    # 10 recruiting message
    [
        ("user", "I'm a recruiter. Help me write a LinkedIn message to {name} — they're a backend engineer at a fintech in {city}. Our hiring manager is {name2}. Keep it short and not cringe."),
        ("assistant", "Hi {first},\n\nI came across your work on backend systems in {city} and thought you might be interested in a Senior Backend Engineer role on {first2}'s team. It's a small team, remote-friendly, and very focused on payments infrastructure.\n\nWould you be open to a 15-minute chat this week?\n\nBest,\n[Your name]"),
        ("user", "nice. they replied and gave me their personal email {email}, can you write a follow-up that cc's {first2}?"),
        ("assistant", "To: {email}\nCc: {name2}\n\nHi {first},\n\nThanks for getting back to me! I've copied {first2}, who leads the team, so you can find a time that works for both of you.\n\nLooking forward to it,\n[Your name]"),
    ],
    # 11 customer support, phone dictated, password phrasing
    [
        ("system", "You are a helpful support assistant for an internet provider. Be concise."),
        ("user", "my router keeps dropping and the tech who came said to call back. my contract is under {name}, the number on file is {phone} (that's the landline, not my mobile)"),
        ("assistant", "Sorry to hear that, {first}. I've noted the contract holder {name} and the landline {phone}. Can you tell me whether the lights on the router turn red when it drops?"),
        ("user", "yeah red. also i changed the wifi key to {password} yesterday, could that be it?"),
        ("assistant", "Changing the Wi‑Fi key to {password} only affects which devices can join, not the line itself, so it shouldn't cause red lights. A red light usually means the line signal is lost — I'll book a line test for the number {phone}."),
    ],
    # 12 group trip planning, card split
    [
        ("user", "ok so for lisbon: me, {first2} and {first3} are flying friday, {first} joins saturday. I booked the airbnb with my card ({card}) so everyone owes me 312€. can you write a message for the group chat?"),
        ("assistant", "Here you go:\n\n\"Hey all! Lisbon is booked 🎉 {first2}, {first3} and I fly Friday, {first} joins Saturday. The Airbnb came to 1,248€ total, which I paid on my card, so that's 312€ each. Please send it whenever you can!\""),
        ("user", "can you add my iban so they can transfer, it's {iban}. and remove the card thing, no one needs that lol"),
        ("assistant", "\"Hey all! Lisbon is booked 🎉 {first2}, {first3} and I fly Friday, {first} joins Saturday. The Airbnb is 312€ each — please transfer to {iban} (name: {name}). Thanks!\""),
    ],
    # 13 obituary
    [
        ("user", "My grandfather passed away last week. His name was {name}, he lived in {city} his whole life and worked as a carpenter. Survived by his wife {first2} and grandchildren. Can you help me write a short obituary for the local paper?"),
        ("assistant", "I'm so sorry for your loss. Here is a draft:\n\n{name}, a lifelong resident of {city}, passed away peacefully last week. A carpenter by trade, {first} was known for his patience, his workshop full of half-finished projects, and his generosity to anyone who needed a hand.\n\nHe is survived by his beloved wife, {first2}, and his grandchildren. {first}'s family invites friends to a memorial service at {street}, {city}.\n\nIn lieu of flowers, donations may be made to a local charity of your choice."),
        ("user", "that's lovely. could you mention that condolences can be sent to the family at {address_lower}"),
        ("assistant", "Of course. Add at the end: \"Condolences may be sent to the {surname} family at {address}.\""),
    ],
    # 14 wedding invitation, Portuguese
    [
        ("user", "oi! to fazendo os convites do meu casamento, pode me ajudar com o texto? os noivos sao {name} e {name2}, a festa vai ser no salão em {address}. rsvp pelo whats {phone}"),
        ("assistant", "Que alegria! Segue uma sugestão:\n\nCom muita alegria,\n{name}\ne\n{name2}\n\nconvidam você para celebrar o seu casamento no dia 14 de setembro, às 16h, em:\n\n{address_lines}\n\nConfirme sua presença até 15 de agosto pelo WhatsApp {phone}."),
        ("user", "amei!! troca pra só os primeiros nomes, {first} e {first2}, fica mais fofo"),
        ("assistant", "Claro:\n\nCom muita alegria,\n{first} & {first2}\nconvidam você para celebrar o seu casamento..."),
    ],
    # 15 log file analysis
    [
        ("user", "what's going on in these logs?\n\n2024-03-11T08:14:02Z INFO  auth: login attempt user={email} ip=10.2.4.17\n2024-03-11T08:14:02Z WARN  auth: invalid credentials for {email} (attempt 3/5)\n2024-03-11T08:14:09Z INFO  kyc: lookup customer_name=\"{name}\" {id_kind}={id}\n2024-03-11T08:14:10Z ERROR kyc: document mismatch for {id}: expected holder \"{name}\", got \"{name2}\""),
        ("assistant", "Two separate things are happening:\n\n1. `{email}` failed to log in three times in a row — likely a mistyped password, but worth watching if it hits 5/5 and locks.\n2. The KYC service looked up {name} by {id_kind} `{id}`, and the document on file belongs to {name2} instead. That's either a data-entry error when the document was uploaded, or someone submitted another person's ID. I'd flag that record for manual review."),
    ],
    # 16 spreadsheet / CSV
    [
        ("user", "I have this CSV of new hires, can you turn it into a markdown table and sort by surname?\n\nname,email,phone,iban\n{name},{email},{phone},{iban}\n{name2},{first2}.hr@example.com,,\n"),
        ("assistant", "Here it is (sorted by surname):\n\n| Name | Email | Phone | IBAN |\n|---|---|---|---|\n| {name} | {email} | {phone} | {iban} |\n| {name2} | {first2}.hr@example.com | – | – |\n\nNote that {name2} is missing a phone number and IBAN, so payroll won't be able to pay them yet."),
    ],
    # 17 API call, JSON with card
    [
        ("user", "getting a 402 from the payments sandbox, body looks like this:\n\n```\ncurl -X POST https://api.sandbox.example.com/v1/charges \\\n  -H 'Content-Type: application/json' \\\n  -d '{{\"amount\": 1999, \"currency\": \"eur\", \"card\": {{\"number\": \"{card}\", \"exp\": \"09/27\", \"cvc\": \"123\"}}, \"billing\": {{\"name\": \"{name}\", \"email\": \"{email}\"}}}}'\n```"),
        ("assistant", "A 402 in the sandbox usually means the card number isn't one of the provider's test numbers. `{card}` looks like a real card — please don't send real card data to a sandbox, and consider rotating it if it's yours. Use a test number instead:\n\n```json\n{{\n  \"amount\": 1999,\n  \"currency\": \"eur\",\n  \"card\": {{\"number\": \"4242424242424242\", \"exp\": \"09/27\", \"cvc\": \"123\"}},\n  \"billing\": {{\"name\": \"{name}\", \"email\": \"{email}\"}}\n}}\n```"),
    ],
    # 18 Czech tax form
    [
        ("user", "Ahoj, vyplňuju daňové přiznání a nevím, kam napsat adresu. Bydlím na adrese {address}. Moje rodné číslo je {id}. Jmenuju se {name}."),
        ("assistant", "Ahoj {first}! Do oddílu „Údaje o poplatníkovi“ napiš:\n\n- Příjmení: {surname}\n- Jméno: {first}\n- Rodné číslo: {id}\n- Adresa bydliště: {address}\n\nPokud máš datovou schránku, můžeš přiznání podat elektronicky."),
        ("user", "a přeplatek mi mají poslat na účet {iban}, to se píše kam?"),
        ("assistant", "To patří do přílohy „Žádost o vrácení přeplatku“ – uveď tam číslo účtu {iban} a jako majitele účtu {name}."),
    ],
    # 19 Hungarian, password phrasing
    [
        ("user", "szia, elfelejtettem a jelszavamat a bankos apphoz, de azt hiszem {password} volt vagy valami hasonló. a regisztrált email címem {email}. mit csináljak?"),
        ("assistant", "Szia! Ne próbálgasd túl sokszor, mert zárolhatják a fiókot. Inkább kattints az „Elfelejtett jelszó” gombra, és a visszaállító linket a {email} címre fogják küldeni. Új jelszónak ne a {password} valamilyen változatát válaszd, hanem valami teljesen újat."),
        ("user", "ok és ha telefonon hívom őket, mit kérdeznek? a számom {phone}"),
        ("assistant", "Valószínűleg a nevedet, születési dátumodat, és hogy melyik telefonszámról hívsz – érdemes a regisztrált {phone} számról telefonálni. Jelszót soha ne mondj be telefonon."),
    ],
    # 20 Danish, moving notification
    [
        ("user", "Hej, jeg skal flytte og vil skrive til min udlejer om opsigelse. Jeg hedder {name} og bor på {street}, {post} {city}. Min nye adresse bliver sendt senere. Kan du skrive det på dansk?"),
        ("assistant", "Selvfølgelig:\n\nKære udlejer,\n\nHermed opsiger jeg mit lejemål på {street}, {post} {city}, med den aftalte opsigelsesvarsel på tre måneder.\n\nDepositum bedes overført til min konto [kontonummer]. Du kan kontakte mig på [telefon] eller [e-mail].\n\nVenlig hilsen\n{name}"),
        ("user", "super tak – kontonummeret er {iban}, mobilen er {phone} og mailen {email}"),
        ("assistant", "Så bliver linjerne: »Depositum bedes overført til min konto {iban}. Du kan kontakte mig på {phone} eller {email}.« Resten af brevet kan stå som det er."),
    ],
    # 21 system prompt + identity verification support
    [
        ("system", "You are an assistant for a travel agency. Help customers with bookings. Never store payment details."),
        ("user", "Hi, I need to change the name on a flight booking, the airline misspelled it. It should be {name} but the ticket says {name_lower}-something weird. My {id_kind} is {id} if that helps."),
        ("assistant", "I can help with that. To request a name correction, the airline will need the name exactly as on your travel document: {name}, {id_kind} {id}. Minor spelling corrections are usually free. Could you share the booking reference?"),
        ("user", "ABX92Q. and they want a card on file for any fees, use {card} exp 11/26"),
        ("assistant", "Thanks — I've sent the correction request for booking ABX92Q to {name}. For the fee, please enter the card directly on the airline's secure payment page rather than in this chat; I won't keep the number you posted."),
    ],
    # 22 casual typos, lowercase
    [
        ("user", "ugh my landlord wants a refernce letter from my old landlord. can u write one from {name2} saying i ({name_lower}) lived at {address_lower} for 3 yrs and always paid on time"),
        ("assistant", "Sure! Here's a draft for {name2} to sign:\n\nTo whom it may concern,\n\nI confirm that {name} rented the property at {address} from me for three years. During that time rent was always paid on time and the property was kept in excellent condition.\n\nPlease feel free to contact me at [phone number].\n\nSincerely,\n{name2}"),
        ("user", "omg thx. {first2}s number is {phone} btw, and sign my part as {first_lower} lol no wait use my full name"),
        ("assistant", "Updated with {first2}'s number: \"Please feel free to contact me at {phone}.\""),
    ],
    # 23 YAML config
    [
        ("user", "can you convert this to YAML for our billing service?\n\n{{\"merchant\": {{\"legal_name\": \"{name}\", \"iban\": \"{iban}\", \"support_email\": \"{email}\"}}, \"smtp\": {{\"user\": \"{email}\", \"secret\": \"{password}\"}}}}"),
        ("assistant", "```yaml\nmerchant:\n  legal_name: \"{name}\"\n  iban: \"{iban}\"\n  support_email: \"{email}\"\nsmtp:\n  user: \"{email}\"\n  secret: \"{password}\"\n```\n\nI'd move `smtp.secret` out of the file into an environment variable (e.g. `SMTP_SECRET`) so `{password}` doesn't end up in version control."),
    ],
    # 24 dictated numbers, words-and-digits
    [
        ("user", "i'm on the phone with the hotel and they need my card, can you just keep track while i read it out. it's four... no wait, reading from the card: {card}, expiry oh-nine twenty-seven"),
        ("assistant", "Got it: card {card}, expiry 09/27. Anything else they need?"),
        ("user", "they want a callback number, it's plus, then {phone}. and the reservation is under {surname}, first name {first}. also they asked for the wifi code for the business centre and said it's {password}, write that down too"),
        ("assistant", "Noted:\n- Card: {card} (exp 09/27)\n- Callback: {phone}\n- Reservation name: {first} {surname}\n- Business centre Wi‑Fi: {password}\n\nOnce the booking is confirmed you may want to delete the card number from this chat."),
    ],
]


HELD_OUT_16_TEMPLATES: list[list[tuple[str, str]]] = [
    # 1 cover letter, casual lowercase
    [
        ("user", "can u write me a short cover letter for a warehouse job. my name is {name_lower}, i live at {address_lower}, phone {phone}. keep it simple pls"),
        ("assistant", "Sure! Here's a short draft:\n\n{name}\n{address}\n{phone}\n\nDear Hiring Manager,\n\nI am writing to apply for the warehouse position advertised in {city}. I am reliable, physically fit and happy to work shifts.\n\nKind regards,\n{name}"),
        ("user", "thx, add my email too its {email}"),
        ("assistant", "Done. Just add this line under your phone number:\n\n{email}"),
    ],
    # 2 German landlord letter
    [
        ("user", "Hallo, kannst du mir helfen einen Brief an meinen Vermieter zu schreiben? Die Heizung geht seit 2 Wochen nicht. Ich bin {name}, Wohnung in der {street}, {post} {city}. Vermieter heißt {name2}."),
        ("assistant", "Gerne. Hier ein Entwurf:\n\n{name}\n{street}\n{post} {city}\n\nSehr geehrte/r {name2},\n\nhiermit teile ich Ihnen mit, dass die Heizung in meiner Wohnung seit zwei Wochen ausgefallen ist. Ich bitte Sie, den Schaden bis spätestens Freitag beheben zu lassen.\n\nMit freundlichen Grüßen\n{name}"),
        ("user", "super, kannst du noch meine Nummer {phone} reinschreiben, damit er mich erreicht"),
        ("assistant", "Natürlich, ergänze einfach vor dem Gruß: „Sie erreichen mich telefonisch unter {phone}.“"),
    ],
    # 3 Python code with a dict of customers
    [
        ("user", "why does this throw KeyError?\n\n```python\ncustomers = [\n    {{\"name\": \"{name}\", \"email\": \"{email}\", \"card\": \"{card}\"}},\n    {{\"name\": \"{name2}\", \"mail\": \"unknown\"}},\n]\nfor c in customers:\n    print(c[\"name\"], c[\"email\"])\n```"),
        ("assistant", "The second dict uses the key `\"mail\"` instead of `\"email\"`, so `c[\"email\"]` fails for {name2}. Use `c.get(\"email\", \"\")`:\n\n```python\nfor c in customers:\n    print(c[\"name\"], c.get(\"email\", \"\"))\n```\n\nThis prints `{name} {email}` for the first entry and an empty email for the second. Also, storing a raw card number like {card} in plain code is a bad idea."),
    ],
    # 4 French, id document renewal
    [
        ("user", "Bonjour, je dois renouveler mon document. Mon {id_kind} c'est le {id}, au nom de {name}. Tu peux m'écrire un mail pour la mairie de {city} ?"),
        ("assistant", "Bonjour,\n\nVoici une proposition :\n\nObjet : Demande de renouvellement\n\nMadame, Monsieur,\n\nJe soussigné(e) {name}, souhaite renouveler mon document ({id_kind} n° {id}). Pourriez-vous m'indiquer les pièces à fournir et les créneaux disponibles ?\n\nCordialement,\n{name}\n{email}"),
        ("user", "merci ! mon mail c'est {email} oui c'est bon"),
    ],
    # 5 SQL insert
    [
        ("user", "write an INSERT for postgres, table users(full_name, email, phone, iban). values: {name}, {email}, {phone}, {iban}"),
        ("assistant", "```sql\nINSERT INTO users (full_name, email, phone, iban)\nVALUES ('{name}', '{email}', '{phone}', '{iban}');\n```\n\nIf the name contains an apostrophe, double it (`''`) or better, use a parameterized query."),
        ("user", "and one more row for {name2} same phone"),
        ("assistant", "```sql\nINSERT INTO users (full_name, email, phone, iban)\nVALUES ('{name2}', NULL, '{phone}', NULL);\n```"),
    ],
    # 6 wifi password, no "password:" label
    [
        ("user", "my mum keeps forgetting the wifi, can you make a cute little card text I can print for the fridge? network is {surname}_home and the key is {password}"),
        ("assistant", "Of course! Here's something fun:\n\n🏠 Welcome to the {surname} house! 🏠\n\nWi-Fi: {surname}_home\nThe magic word: {password}\n\nLove, {first}"),
        ("user", "lol perfect, sign it from me and {first2}"),
        ("assistant", "🏠 Welcome to the {surname} house! 🏠\n\nWi-Fi: {surname}_home\nThe magic word: {password}\n\nLove, {first} & {first2} ❤️"),
    ],
    # 7 system + YAML config
    [
        ("system", "You are a helpful DevOps assistant."),
        ("user", "is this yaml valid?\n\n```yaml\nsmtp:\n  host: mail.example.org\n  user: {email}\n  pass: \"{password}\"\nowner:\n  name: {name}\n  phone: {phone}\n```"),
        ("assistant", "Yes, it parses fine. A couple of notes:\n\n- `pass: \"{password}\"` is quoted, which is good if it contains special characters.\n- Consider moving the secret out of the file into an environment variable, e.g. `SMTP_PASS`.\n- `phone: {phone}` may be read as a number by some parsers if it has no `+` or spaces; quote it to be safe: `phone: \"{phone}\"`."),
    ],
    # 8 Spanish bank transfer
    [
        ("user", "hola! tengo que mandar dinero a mi hermana {name2} para el alquiler, me pasó su IBAN {iban}. como le escribo un mensaje formal al banco si la transferencia no llegó?"),
        ("assistant", "¡Claro! Aquí tienes un ejemplo:\n\nEstimados señores:\n\nEl pasado lunes realicé una transferencia a favor de {name2}, con IBAN {iban}, que todavía no ha sido abonada. Les ruego que revisen la operación.\n\nAtentamente,\n{name}"),
        ("user", "gracias, mi teléfono por si acaso es el {phone}"),
        ("assistant", "Perfecto, añade al final: «Pueden contactarme en el {phone}.»"),
    ],
    # 9 Slack-like export, forwarded message
    [
        ("user", "can you summarize this thread from slack\n\n---------- Forwarded message ---------\nFrom: {name} <{email}>\nTo: ops-team\n\nhey all, {first2} from finance asked me to send the corporate card for the offsite booking: {card}. exp 09/27. pls delete after use!!\n\n{first}"),
        ("assistant", "Summary: {name} forwarded a request from {first2} (finance) and shared the corporate card number ({card}, exp 09/27) for the offsite booking, asking everyone to delete it afterwards. You may want to remove the card number from the channel entirely."),
    ],
    # 10 Polish, address on lines
    [
        ("user", "Cześć, muszę wysłać paczkę do babci. Czy dobrze napisałem adres?\n\n{name2}\n{address_lines}"),
        ("assistant", "Wygląda poprawnie. Na paczce napisz:\n\nOdbiorca:\n{name2}\n{address_lines}\n\nPamiętaj też o nadawcy i numerze telefonu odbiorcy, jeśli kurier go wymaga."),
        ("user", "ok, nadawca to ja {name}, tel {phone}"),
        ("assistant", "Świetnie. Nadawca: {name}, tel. {phone}."),
    ],
    # 11 CSV cleanup with address_qq
    [
        ("user", "my export from the crm came out weird, addresses have ??? everywhere. how do i fix in excel?\n\nname,address,email\n{name},\"{address_qq}\",{email}\n{name2},\"{address_qq}\","),
        ("assistant", "The `???` are lost line breaks. In Excel, select the column and use Find & Replace: find `???`, replace with `Ctrl+J` (a line break) or with `, ` if you want one line. For the first row you'd get:\n\n{address_lines}\n\nfor {name}, with email {email}."),
    ],
    # 12 dictated card number in words and digits
    [
        ("user", "i'm on the phone with the airline and they want my card, my daughter read it to me as four five... ugh, it's {card}, can you split it into groups of four so i can read it out"),
        ("assistant", "Sure, just read it slowly, group by group. The number you gave is {card}. Read each block of four digits, pausing between them, then give the expiry date and the CVC only when asked. Don't share the CVC in chat."),
        ("user", "thanks. name on card is {name} btw, all caps?"),
        ("assistant", "Yes, airlines usually want it exactly as printed on the card, so: {name}, often in capitals."),
    ],
    # 13 Italian, possessive names and email signature
    [
        ("user", "Ciao! Mi scrivi una firma email professionale? Nome {name}, ufficio in {street}, {post} {city}, {country}. Cellulare {phone}, mail {email}"),
        ("assistant", "Ecco una proposta:\n\n--\n{name}\nResponsabile Amministrativo\n{street}\n{post} {city} – {country}\nCell. {phone}\n{email}"),
        ("user", "perfetto. mettiamo anche la collega, {name2}, sotto"),
        ("assistant", "--\n{name} | {name2}\nUfficio Amministrativo\n{street}, {post} {city} – {country}\nCell. {phone} · {email}"),
    ],
    # 14 JSON API payload
    [
        ("user", "the api returns 422 with this body, what's wrong?\n\n```json\n{{\n  \"customer\": {{\n    \"first_name\": \"{first}\",\n    \"last_name\": \"{surname}\",\n    \"email\": \"{email}\",\n    \"iban\": \"{iban} \"\n  }}\n}}\n```"),
        ("assistant", "There's a trailing space in the IBAN: `\"{iban} \"`. Many validators reject that. Try:\n\n```json\n{{\n  \"customer\": {{\n    \"first_name\": \"{first}\",\n    \"last_name\": \"{surname}\",\n    \"email\": \"{email}\",\n    \"iban\": \"{iban}\"\n  }}\n}}\n```"),
    ],
    # 15 Dutch, list of people
    [
        ("user", "Kun je deze lijst van vrijwilligers alfabetisch zetten?\n- {name}\n- {name2}\n- {first3} (achternaam weet ik niet)\n- {first2}"),
        ("assistant", "Natuurlijk, hier is de lijst (op voornaam waar de achternaam ontbreekt):\n\n- {first2}\n- {first3}\n- {name}\n- {name2}\n\nLet op: ik heb dit snel gedaan; controleer even of de volgorde klopt voor jouw alfabet."),
        ("user", "top. {first} coördineert, zet haar nummer erbij: {phone}"),
        ("assistant", "Coördinator: {name} – {phone}"),
    ],
    # 16 password reset help, password phrasing
    [
        ("user", "I locked myself out of my laptop. I'm pretty sure I set it to {password} but it says wrong. could caps lock matter?"),
        ("assistant", "Yes, passwords are case-sensitive, so caps lock definitely matters. Try typing {password} with caps lock off, and check the keyboard layout (e.g. German QWERTZ swaps Y and Z). Also, since you've now shared it here, it's worth changing it once you're back in."),
        ("user", "it worked!!! layout was on english. my account is {email} if i need to reset tho right?"),
        ("assistant", "Great! Yes, if it's a Microsoft account, the reset would go through {email}."),
    ],
    # 17 Portuguese, formulário
    [
        ("user", "oi, preciso preencher um formulário de matrícula pro meu filho. me ajuda a organizar? responsável: {name}, {id_kind} {id}, endereço {address}, telefone {phone}"),
        ("assistant", "Claro! Fica assim:\n\n| Campo | Valor |\n|---|---|\n| Responsável | {name} |\n| Documento ({id_kind}) | {id} |\n| Endereço | {address} |\n| Telefone | {phone} |\n\nÉ só copiar para o formulário."),
    ],
    # 18 shell script with env vars
    [
        ("user", "bash script keeps failing at login:\n\n```bash\n#!/bin/bash\nexport DB_USER={first_lower}\nexport DB_PASS={password}\npsql -U $DB_USER -h db.local -c \"select * from orders where email='{email}'\"\n```"),
        ("assistant", "If the password contains characters like `$`, `!` or `&`, the shell interprets them. Quote it:\n\n```bash\nexport DB_PASS='{password}'\nexport PGPASSWORD=\"$DB_PASS\"\npsql -U \"$DB_USER\" -h db.local -c \"select * from orders where email='{email}'\"\n```\n\n`psql` reads `PGPASSWORD`, not `DB_PASS`, which is likely why it prompts or fails for user `{first_lower}`."),
    ],
    # 19 Czech, typos, name after punctuation
    [
        ("user", "ahoj, potrebuju napsat omluvenku do skoly.syn se jmenuje {first} {surname}, byl nemocny od pondeli. podepsat:{name2}"),
        ("assistant", "Ahoj, tady je návrh:\n\nVážená paní učitelko,\n\nomlouvám svého syna {first} {surname} z výuky od pondělí z důvodu nemoci.\n\nDěkuji za pochopení.\n\n{name2}"),
        ("user", "dik. a kdyby chteli kontakt tak {phone} nebo {email}"),
        ("assistant", "Přidej pod podpis: Kontakt: {phone}, {email}"),
    ],
    # 20 Hungarian, IBAN and invoice
    [
        ("user", "Szia! Számlát kell küldenem egy ügyfélnek. Az én adataim: {name}, {address}, bankszámla {iban}. Az ügyfél {name2}. Írnál egy rövid kísérőlevelet?"),
        ("assistant", "Szia! Íme egy javaslat:\n\nKedves {name2}!\n\nMellékelten küldöm a múlt havi munkáról szóló számlát. Kérem, az összeget 8 napon belül utalja a következő számlaszámra: {iban}.\n\nÜdvözlettel:\n{name}\n{address}"),
    ],
    # 21 system + Danish, support chat
    [
        ("system", "Du er en venlig kundeservice-assistent for en webshop."),
        ("user", "hej, min ordre er ikke kommet. den skulle sendes til {street}, {post} {city}. ordren står på {name}"),
        ("assistant", "Hej {first}, det er jeg ked af at høre. Jeg kan se, at pakken er sendt til {street}, {post} {city}. Kan du bekræfte din e-mail, så jeg kan finde ordren?"),
        ("user", "ja det er {email}. og betalte med kortet der ender på... nej vent, hele nummeret er {card}"),
        ("assistant", "Tak, {first}. Du behøver ikke dele hele kortnummeret her – jeg har fundet ordren via {email}. Vi sender en ny pakke i dag."),
    ],
    # 22 markdown table of team / id numbers, HR
    [
        ("user", "Turn this into a markdown table for the onboarding doc:\n{name} - {email} - {id_kind}: {id}\n{name2} - no email yet - starts monday\n{first3} - intern, ask {first2}"),
        ("assistant", "| Name | Email | Notes |\n|---|---|---|\n| {name} | {email} | {id_kind}: {id} |\n| {name2} | – | Starts Monday |\n| {first3} | – | Intern, ask {first2} |"),
        ("user", "hmm maybe drop the {id_kind} column, it's a shared doc"),
        ("assistant", "Good call. Updated:\n\n| Name | Email | Notes |\n|---|---|---|\n| {name} | {email} | |\n| {name2} | – | Starts Monday |\n| {first3} | – | Intern, ask {first2} |"),
    ],
    # 23 German/English mix, travel form, address lines and phone dictated
    [
        ("user", "Ich fülle ein Visa-Formular aus, die wollen die Adresse in Englisch. Meine ist:\n{address_lines}\nWie schreib ich das?"),
        ("assistant", "In English forms you can usually keep it as is:\n\nStreet: {street}\nPostcode/City: {post} {city}\nCountry: {country}"),
        ("user", "und telefon ist null... also {phone}, mit ländervorwahl?"),
        ("assistant", "Ja, gib sie international an, also mit „+“ und Ländervorwahl statt der führenden Null. Deine Nummer {phone} sollte entsprechend umgeschrieben werden."),
        ("user", "ok und {id_kind} {id} trag ich bei document number ein?"),
        ("assistant", "Genau: „Document number: {id}“, und als Dokumenttyp wählst du {id_kind}."),
    ],
    # 24 system + refund email with card, iban
    [
        ("system", "You are a concise writing assistant."),
        ("user", "need an email to the gym to cancel and get a refund. membership under {name}. they charged my card {card} twice. refund should go to my account {iban} not the card. my member no is {id}"),
        ("assistant", "Subject: Membership cancellation and refund request\n\nHello,\n\nI would like to cancel my membership (member no. {id}, account holder {name}) effective immediately.\n\nMy card {card} was charged twice this month. Please refund the duplicate payment to my bank account: {iban}.\n\nThank you,\n{name}"),
        ("user", "good. {first}'s fine as sign-off, they know me"),
        ("assistant", "Sure, just end it with:\n\nThanks,\n{first}"),
    ],
]


HELD_OUT_17_TEMPLATES: list[list[tuple[str, str]]] = [
    # 1 travel booking, casual
    [
        ("user", "ok so the hotel site keeps timing out at the payment step. can you just tell me if this looks right before i try again? guest: {name}, card {card}, mobile {phone}. check in 14th, 3 nights"),
        ("assistant", "That looks fine. Double-check these fields before you resubmit:\n\n- Guest name: {name} (must match the name on the card)\n- Card number: {card}\n- Mobile: {phone}\n- Dates: check-in on the 14th, 3 nights, so check-out on the 17th\n\nIf it times out again, try another browser, or ring the hotel and give them the card over the phone."),
        ("user", "thx. also should i put {first2}'s name as second guest or not needed"),
        ("assistant", "Add {name2} as the second guest if the booking form lets you. Some hotels ask for every guest's name when you check in."),
    ],
    # 2 medical appointment, German
    [
        ("user", "Kannst du mir helfen eine kurze Mail an die Hausarztpraxis zu schreiben? Ich brauche einen Termin wegen Rückenschmerzen, am liebsten nächste Woche vormittags. Ich bin {name}, Versichertennummer {id}, erreichbar unter {phone}."),
        ("assistant", "Gerne, hier ein Vorschlag:\n\nBetreff: Terminanfrage – {name}\n\nSehr geehrtes Praxisteam,\n\nich möchte gern einen Termin wegen anhaltender Rückenschmerzen vereinbaren, wenn möglich nächste Woche am Vormittag.\n\nMeine Versichertennummer lautet {id}. Sie erreichen mich telefonisch unter {phone}.\n\nVielen Dank und freundliche Grüße\n{name}"),
        ("user", "super, kannst du noch reinschreiben dass ich neu umgezogen bin, neue adresse {address}"),
        ("assistant", "Klar, vor dem Gruß einfach ergänzen:\n\n„Bitte beachten Sie außerdem meine neue Anschrift: {address}.“"),
    ],
    # 3 wedding guest list CSV with ??? export
    [
        ("user", "exported our guest list from the wedding spreadsheet and the addresses came out weird, can you fix the format?\n\nname,email,address\n{name},{email},{address_qq}\n{name2},,\"{street}???{post} {city}\"\n"),
        ("assistant", "The line breaks inside the address cells were turned into \"???\" when you exported. Here it is cleaned up, with the address split into columns:\n\n```csv\nname,email,street,postcode,city,country\n{name},{email},{street},{post},{city},{country}\n{name2},,{street},{post},{city},\n```\n\nBoth rows seem to have the same street. Is {first2} living with {first}, or did a copy-paste go wrong?"),
        ("user", "oh yeah they live together lol. {first3} and her kids still missing, ill add later"),
    ],
    # 4 CV in French, markdown
    [
        ("user", "Je postule pour un poste d'assistante administrative. Tu peux me faire l'en-tête de mon CV en markdown ? Nom : {name}, adresse :\n{address_lines}\ntél {phone}, mail {email}"),
        ("assistant", "Voici une proposition d'en-tête :\n\n```markdown\n# {name}\n**Assistante administrative**\n\n{street}  \n{post} {city}  \n{country}\n\n📞 {phone} · ✉️ {email}\n```\n\nAjoute dessous une courte accroche de deux lignes sur ton expérience, puis tes postes du plus récent au plus ancien."),
        ("user", "Merci ! Est-ce que je mets mon {id_kind} aussi ? c'est {id}"),
        ("assistant", "Non, pas besoin. Un CV n'a pas à contenir de {id_kind}. L'employeur le demandera au moment de l'embauche s'il en a besoin. Garde seulement nom, adresse, téléphone et mail."),
    ],
    # 5 moving house, Dutch, bank letter with IBAN
    [
        ("user", "We zijn verhuisd. Kun je een korte brief maken voor mijn bank om mijn adres te wijzigen? Rekening {iban}, op naam van {name}. Nieuw adres: {address}."),
        ("assistant", "Natuurlijk:\n\n{name}\n{street}\n{post} {city}\n\nBetreft: adreswijziging rekening {iban}\n\nGeachte heer/mevrouw,\n\nHierbij laat ik u weten dat mijn adres is gewijzigd. Vanaf nu is mijn adres {street}, {post} {city}. Wilt u dit aanpassen voor mijn rekening {iban}?\n\nMet vriendelijke groet,\n\n{name}"),
        ("user", "top. moet mijn vrouw {name2} ook tekenen? het is een en/of rekening"),
        ("assistant", "Bij een en/of-rekening willen de meeste banken dat beide rekeninghouders tekenen. Zet daarom onder je eigen naam ook \"{name2}\" met ruimte voor een handtekening."),
    ],
    # 6 school trip, Polish
    [
        ("user", "potrzebuję napisać zgodę na wycieczkę szkolną dla syna, {first2} chodzi do 3b. ja jestem {name}, tel. {phone}"),
        ("assistant", "Proszę bardzo:\n\nZGODA RODZICA\n\nWyrażam zgodę na udział mojego syna {first2} {surname}, ucznia klasy 3b, w wycieczce szkolnej.\n\nW razie potrzeby proszę o kontakt pod numerem {phone}.\n\n……………………………\n(podpis rodzica: {name})"),
        ("user", "dzięki. a gdyby mnie nie było, to druga osoba to babcia, {name2}, numer ma ten sam co ja prawie tylko ostatnia cyfra inna"),
        ("assistant", "Możesz dopisać: „Osoba kontaktowa zastępczo: {name2} (babcia)”. Wpisz jednak jej pełny numer telefonu, bo nauczyciel nie będzie zgadywał ostatniej cyfry."),
    ],
    # 7 sports club SEPA, Spanish
    [
        ("user", "Hola, mi hija se apunta al club de natación y me piden rellenar la domiciliación bancaria. Titular {name}, IBAN {iban}, domicilio {address}. ¿Me ayudas a redactar el texto?"),
        ("assistant", "Claro. Un texto típico sería:\n\nOrden de domiciliación SEPA\n\nTitular de la cuenta: {name}\nIBAN: {iban}\nDirección: {street}, {post} {city}, {country}\n\nMediante la firma de esta orden, {name} autoriza al Club de Natación a cargar en la cuenta {iban} las cuotas mensuales de la socia {first3} {surname}.\n\nFecha y firma: ____________"),
        ("user", "perfecto, y el email para los recibos es {email}"),
        ("assistant", "Añádelo justo debajo de la dirección: «Correo electrónico para recibos: {email}»."),
    ],
    # 8 marketplace sale, Italian
    [
        ("user", "ho venduto una bici su subito, il compratore vuole pagare con bonifico. gli mando il mio iban {iban} intestato a {name}? è sicuro?"),
        ("assistant", "Di solito sì: con l'IBAN si possono solo ricevere soldi, non prelevarli. Puoi scrivergli così:\n\n\"Ciao, per il pagamento puoi fare un bonifico a:\nIntestatario: {name}\nIBAN: {iban}\nCausale: bici usata\nQuando vedo l'accredito ti spedisco la bici.\"\n\nNon mandargli altro, e soprattutto nessun codice che ti arriva via SMS."),
        ("user", "lui mi ha dato il suo indirizzo per la spedizione: {name2}, {address}. e il cell {phone}"),
        ("assistant", "Bene. Sull'etichetta scrivi:\n\n{name2}\n{street}\n{post} {city}\nTel. {phone}\n\nSpedisci solo dopo che il bonifico risulta accreditato, non quando ti manda lo \"screenshot\"."),
    ],
    # 9 neighbour / landlord complaint, English
    [
        ("user", "Need a polite but firm email to my landlord, {name2}. The boiler at {street} has been broken for 9 days and nobody came. I've called {first2} twice. My email is {email} if it needs to be in there"),
        ("assistant", "Subject: Boiler repair at {street} – still outstanding after 9 days\n\nDear {name2},\n\nI'm writing about the boiler at {street}, {post} {city}. It has now been broken for nine days. I have phoned you twice, and nobody has come to repair it yet.\n\nPlease arrange a repair within the next 48 hours and let me know when the engineer will come. You can reach me at {email}.\n\nKind regards,\n{name}"),
        ("user", "good but make it a bit less stiff, {first2} is actually nice usually"),
        ("assistant", "Sure, here's a friendlier opening:\n\n\"Hi {first2},\n\nHope you're well! Sorry to chase again, but the boiler at {street} is still not working (it's been nine days now)...\""),
    ],
    # 10 family group chat export, Slack-like, password
    [
        ("user", "can u summarize this family chat, i was away all weekend\n\n[Sat 09:12] {first2}: who has the netflix login again\n[Sat 09:15] {first}: same as always, {email} and the pw is {password}\n[Sat 09:15] {first3}: 🙏\n[Sat 11:40] {first2}: mum says lunch sunday at hers, {address}\n[Sun 08:02] {first}: cant make it, call me {phone} if anything"),
        ("assistant", "Here's the short version:\n\n- {first2} asked for the Netflix login. {first} sent it in the chat ({email} / {password}).\n- Sunday lunch was at mum's, {address}.\n- {first} couldn't come and said to call on {phone} if anything came up.\n\nYou may want to change that Netflix password, since it's now sitting in the group chat in plain text."),
    ],
    # 11 Python code with credentials
    [
        ("user", "my script to auto-book the gym class doesnt log in, whats wrong\n\n```python\nimport requests\n\ns = requests.Session()\nr = s.post(\"https://book.mygym.example/login\", data={{\"user\": \"{email}\", \"pass\": \"{password}\"}})\nprint(r.status_code)\ns.post(\"https://book.mygym.example/classes/spin/book\", json={{\"member\": \"{name}\"}})\n```"),
        ("assistant", "Most likely the login form expects different field names, or a CSRF token. Open the login page in your browser's dev tools and look at the request it sends. Also, keep the credentials out of the code itself:\n\n```python\nimport os, requests\n\ns = requests.Session()\nr = s.post(\n    \"https://book.mygym.example/login\",\n    data={{\"email\": os.environ[\"GYM_USER\"], \"password\": os.environ[\"GYM_PASS\"]}},\n)\nr.raise_for_status()\ns.post(\"https://book.mygym.example/classes/spin/book\", json={{\"member\": \"{name}\"}})\n```\n\nThen run it with `GYM_USER={email} GYM_PASS='{password}' python book.py`. Better still, put them in a `.env` file that never gets committed."),
    ],
    # 12 SQL, sports club members
    [
        ("user", "I'm the treasurer of our tennis club. Why does this insert fail?\n\nINSERT INTO members (full_name, email, phone, iban)\nVALUES ('{name}', '{email}', '{phone}', '{iban}')\n       ('{name2}', NULL, NULL, NULL);"),
        ("assistant", "You're missing a comma between the two row tuples. It should be:\n\n```sql\nINSERT INTO members (full_name, email, phone, iban)\nVALUES\n  ('{name}', '{email}', '{phone}', '{iban}'),\n  ('{name2}', NULL, NULL, NULL);\n```\n\nAlso, if a surname has an apostrophe (O'Brien and the like), double it inside the string, or better, use parameterised queries."),
    ],
    # 13 YAML config for wedding RSVP site
    [
        ("user", "setting up the rsvp site for our wedding, the mail part isnt sending. config:\n\nsmtp:\n  host: smtp.gmail.com\n  port: 465\n  user: {email}\n  password: \"{password}\"\nreply_to: {email}\ncouple: \"{first} & {first2}\""),
        ("assistant", "With Gmail on port 465 you need SSL turned on, and an App Password rather than your normal account password. Try:\n\n```yaml\nsmtp:\n  host: smtp.gmail.com\n  port: 465\n  ssl: true\n  user: {email}\n  password: \"<16-char app password>\"\nreply_to: {email}\ncouple: \"{first} & {first2}\"\n```\n\nIf \"{password}\" is your real Gmail password, replace it with an app password and change the real one, since it's been pasted here."),
    ],
    # 14 JSON passenger details
    [
        ("user", "the airline api returns 400 for this, any idea?\n\n{{\n  \"passenger\": {{\"name\": \"{name}\", \"document\": {{\"type\": \"{id_kind}\", \"number\": \"{id}\"}}}},\n  \"contact\": {{\"email\": \"{email}\", \"phone\": \"{phone}\"}}\n}}"),
        ("assistant", "The structure is valid JSON. Airline APIs usually want first and last name as separate fields and the phone in E.164 format (+ followed by digits, no spaces). Something like:\n\n```json\n{{\n  \"passenger\": {{\n    \"firstName\": \"{first}\",\n    \"lastName\": \"{surname}\",\n    \"document\": {{\"type\": \"PASSPORT\", \"number\": \"{id}\"}}\n  }},\n  \"contact\": {{\"email\": \"{email}\", \"phone\": \"{phone}\"}}\n}}\n```\n\nCheck the API docs to see whether \"{id_kind}\" is an accepted document type. Most APIs want an enum such as PASSPORT or ID_CARD."),
    ],
    # 15 forwarded message with signature
    [
        ("user", "can you tell me what this person actually wants? forwarded from my husband\n\n---------- Forwarded message ---------\nFrom: {name2} <{email}>\nSubject: Re: sofa\n\nHi, yes still interested in the sofa. Could you hold it till Saturday? I can pay cash or by card, {card} if you have a reader lol. I'd pick up from {address}.\n\nBest,\n{name2}\nMob: {phone}"),
        ("assistant", "{first2} wants the sofa and is asking you to hold it until Saturday. They'll collect it from {address} and can pay in cash. They also pasted a card number ({card}). You shouldn't take card details like that, so reply that you'll only take cash or a bank transfer. If you need to reach them, their mobile is {phone}."),
    ],
    # 16 dictated numbers
    [
        ("user", "i'm on the phone with the insurance and they want the card i paid the cancelled flight with. i read it to them as {card}, expiry oh-nine slash twenty-seven. they say it doesnt match. name on card is {name_lower}"),
        ("assistant", "Check these things:\n\n1. Is {card} really the card you booked the flight with? People often have a debit card and a credit card with the same bank.\n2. The cardholder name should be read exactly as printed, e.g. \"{name}\", with any middle initial.\n3. Some insurers only want the last four digits. Ask before you read out the whole number again."),
        ("user", "ok they also asked a callback number, i said {phone}, plus the claim needs my {id_kind}: {id}"),
        ("assistant", "Fine. Write down what you gave them: callback number {phone}, {id_kind} {id}, and the claim reference they give you at the end of the call."),
    ],
    # 17 Czech rental
    [
        ("user", "Pronajímám byt a potřebuju krátkou smlouvu, aspoň hlavičku. Pronajímatel: {name}, nájemce: {name2}, byt na adrese {address}, nájem se platí na účet {iban}."),
        ("assistant", "Tady je úvod smlouvy:\n\nNÁJEMNÍ SMLOUVA\n\nPronajímatel: {name}\nNájemce: {name2}\n\nPředmět nájmu: byt na adrese {street}, {post} {city}.\n\nNájemné je splatné vždy do 15. dne v měsíci na účet pronajímatele {iban}.\n\nMám doplnit i kauci a dobu nájmu?"),
        ("user", "jo, kauce dva nájmy. a nájemce chce mít v smlouvě i svůj mail {email}"),
        ("assistant", "Doplň: „Kauce ve výši dvou měsíčních nájmů bude uhrazena na účet {iban} před předáním bytu. Kontaktní e-mail nájemce: {email}.“"),
    ],
    # 18 Hungarian doctor
    [
        ("user", "Szia! Segítenél megírni egy emailt a fogorvosnak? Időpontot szeretnék kérni. {name} vagyok, TAJ-szám {id}, telefonszám {phone}."),
        ("assistant", "Persze, itt egy javaslat:\n\nTárgy: Időpontkérés – {name}\n\nTisztelt Doktor Úr/Doktornő!\n\nSzeretnék időpontot kérni fogászati kontrollra, lehetőleg a jövő héten délután.\n\nTAJ-számom: {id}\nTelefonszámom: {phone}\n\nKöszönettel:\n{name}"),
        ("user", "köszi! és írd bele hogy a lányom {first3} is jönne"),
        ("assistant", "Add hozzá az első bekezdés után: „Ha lehetséges, a lányomnak, {first3} {surname}-nak is szeretnék időpontot ugyanarra a napra.”"),
    ],
    # 19 Danish daycare
    [
        ("user", "Hej, vi skal skrive vores datter op til vuggestue. Kan du hjælpe med en besked til lederen? Mor: {name}, far: {name2}, vores adresse er {address}, tlf {phone}"),
        ("assistant", "Selvfølgelig:\n\nKære leder,\n\nVi vil gerne skrive vores datter op til en plads i vuggestuen fra august.\n\nForældre: {name} og {name2}\nAdresse: {street}, {post} {city}\nTelefon: {phone}\n\nVi kommer gerne forbi til en rundvisning.\n\nVenlig hilsen\n{first} og {first2}"),
        ("user", "skal hendes cpr med? det er {id}"),
        ("assistant", "Nej, send ikke CPR-nummeret i en almindelig mail. Det skal de have via den kommunale pladsanvisning eller en sikker mail. Skriv bare hendes fornavn og fødselsdato."),
    ],
    # 20 Brazilian job application
    [
        ("user", "oi! vou me candidatar a uma vaga de recepcionista numa clínica. escreve um email curto pra mim? meu nome é {name}, email {email}, celular {phone}"),
        ("assistant", "Claro! Segue:\n\nAssunto: Candidatura – Recepcionista – {name}\n\nPrezados,\n\nMeu nome é {name} e gostaria de me candidatar à vaga de recepcionista. Tenho experiência com atendimento ao público e agendamento de consultas. Segue meu currículo em anexo.\n\nFico à disposição pelo e-mail {email} ou pelo celular {phone}.\n\nAtenciosamente,\n{name}"),
        ("user", "eles pedem o {id_kind} no formulario do site, coloco {id} assim mesmo?"),
        ("assistant", "Se o formulário da clínica pede, pode colocar {id}. Só confira se o site é o oficial da clínica (https e o domínio certo) antes de enviar."),
    ],
    # 21 casual lowercase typos, birthday party
    [
        ("user", "helpp planning moms 60th, me and {first2} are splitting costs. venue wants deposit by card, i gave them {card} but they want billing adress, is it {address_lower} or do they mean my old one"),
        ("assistant", "The billing address is whatever address your card issuer has on file for that card. If you never told your bank you moved, it's probably still the old one. If you did update it, use {address}. Your banking app will show which one they have."),
        ("user", "ok its the new one. also venue guy wants a contact, put me {name_lower}, mail {email}"),
        ("assistant", "Here's a reply you can send the venue:\n\n\"Hi, please use {name} as the main contact ({email}). Billing address for the card: {address}. {first2} will share the costs but all invoices should go to me. Thanks!\""),
    ],
    # 22 names in possessive/after punctuation, school group
    [
        ("user", "Writing the class newsletter. Check grammar pls: \"Thanks to {name}'s help, the bake sale raised £340!{name2} (Year 4 rep) collected the money;{first3} handled the posters. Questions? Call {first} on {phone}.\""),
        ("assistant", "A few small fixes, mostly missing spaces after punctuation:\n\n\"Thanks to {name}'s help, the bake sale raised £340! {name2} (Year 4 rep) collected the money, and {first3} handled the posters. Any questions? Call {first} on {phone}.\"\n\nYou might also ask {first} first whether they're happy for their number to go in a newsletter that gets shared widely."),
    ],
    # 23 system + markdown table sports roster
    [
        ("system", "You are a helpful assistant for a local football club's volunteers."),
        ("user", "turn this into a markdown table for the U10 parents list:\n{name} - {phone} - {email}\n{name2} - no phone - no email\n{first3} {surname} (coach) - same number as {first}"),
        ("assistant", "| Name | Phone | Email | Notes |\n|---|---|---|---|\n| {name} | {phone} | {email} | |\n| {name2} | – | – | no contact details yet |\n| {first3} {surname} | {phone} | – | coach, same number as {first} |\n\nYou may want to get {first2}'s contact details before the first match."),
        ("user", "great. the shared club google account for the fixtures is {email} / {password}, should i put it under the table"),
        ("assistant", "I'd leave it out. Anyone who gets the parents list would also get the login. Send {password} privately to the volunteers who need it, or better, invite them to the calendar with their own accounts."),
    ],
    # 24 system + shell, moving house utility + lockbox code
    [
        ("system", "You are ChatGPT, a large language model. Answer concisely."),
        ("user", "moving out next week. I have a little shell script that emails the new tenant the info, does it look ok?\n\n```bash\n#!/bin/bash\nTO=\"{email}\"\nBODY=\"Hi {first2}, keys are in the lockbox at {street}, code 4471. wifi is {password}. call me on {phone} if stuck. -- {first}\"\necho \"$BODY\" | mail -s \"Move-in info\" \"$TO\"\n```"),
        ("assistant", "The script works. Two suggestions:\n\n```bash\n#!/bin/bash\nset -euo pipefail\nTO=\"{email}\"\nBODY=$(cat <<EOF\nHi {first2},\n\nKeys are in the lockbox at {street}, code 4471.\nWi-Fi password: {password}\nCall me on {phone} if you get stuck.\n\n-- {first}\nEOF\n)\nprintf '%s\\n' \"$BODY\" | mail -s \"Move-in info\" \"$TO\"\n```\n\n1. A heredoc keeps the line breaks readable.\n2. Change the Wi-Fi password and the lockbox code once you've handed over, since both are now in a script and an email."),
    ],
]


HELD_OUT_18_TEMPLATES: list[list[tuple[str, str]]] = [
    # 1 German gym cancellation with SEPA mandate
    [
        ("user", "kannst du mir eine kündigung für mein fitnessstudio schreiben? vertrag läuft auf {name}, wohne {address}. die buchen immer noch per lastschrift von {iban} ab obwohl ich schon im märz gekündigt hab. bitte auch den sepa-mandat widerruf rein"),
        ("assistant", "Gerne, hier ein Entwurf:\n\n{name}\n{street}\n{post} {city}\n\nBetreff: Kündigung der Mitgliedschaft und Widerruf des SEPA-Lastschriftmandats\n\nSehr geehrte Damen und Herren,\n\nhiermit kündige ich meine Mitgliedschaft fristgerecht zum nächstmöglichen Termin. Gleichzeitig widerrufe ich das SEPA-Lastschriftmandat für das Konto mit der IBAN {iban}. Ich fordere Sie auf, die seit April unberechtigt eingezogenen Beiträge zu erstatten.\n\nMit freundlichen Grüßen\n{name}\n\nSchick das am besten per Einschreiben und sag deiner Bank parallel Bescheid, dann kannst du die Lastschriften innerhalb von 8 Wochen zurückgeben lassen."),
        ("user", "perfekt danke. kann ich noch reinschreiben dass {first2} (mein mann) das gleiche problem hat? der hat den vertrag über mich"),
        ("assistant", "Ja, ergänze einfach nach dem ersten Absatz: „Dies gilt ebenso für die Zusatzmitgliedschaft von {first2}, die über meinen Vertrag läuft.“ So ist klar, dass beide Mitgliedschaften enden."),
    ],
    # 2 Python Luhn bug
    [
        ("user", """why does this say the card is invalid?? it's my own card, it works in shops

```python
customer = {{
    "name": "{name}",
    "email": "{email}",
    "card": "{card}",
}}

def luhn_ok(num):
    digits = [int(c) for c in num]
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0

print(luhn_ok(customer["card"]))
```"""),
        ("assistant", """Two issues:

1. You double the wrong digits. In Luhn you double every **second** digit from the right, i.e. `i % 2 == 1`.
2. If the number contains spaces or dashes, `int(c)` will crash or the input isn't what you think — strip them first.

```python
def luhn_ok(num: str) -> bool:
    digits = [int(c) for c in num if c.isdigit()]
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0

print(luhn_ok("{card}"))  # should be True now
```

Side note: avoid keeping a real card number like {card} in source files — use a test number such as 4111 1111 1111 1111 while developing."""),
    ],
    # 3 SQL insert failing
    [
        ("user", """getting ERROR: duplicate key value violates unique constraint "contacts_email_key" but the table is empty??

INSERT INTO contacts (full_name, email, phone, city) VALUES
('{name}', '{email}', '{phone}', '{city}'),
('{name2}', '{email}', NULL, '{city}');"""),
        ("assistant", """The table doesn't have to contain the value already — both rows in your single INSERT use the same email `{email}`, so the second row collides with the first one within the same statement.

Give {name2} their own address, or if they really share it, drop the constraint:

```sql
INSERT INTO contacts (full_name, email, phone, city) VALUES
('{name}', '{email}', '{phone}', '{city}'),
('{name2}', NULL, NULL, '{city}');
```

Or use `ON CONFLICT (email) DO NOTHING` if you just want to skip duplicates."""),
        ("user", "ah ok, {first2} is my wife, we use one address for everything lol. null it is"),
    ],
    # 4 health, elderly parent
    [
        ("user", "hi, my mum {name} has a cardiology appt next tuesday and i need to call to move it but i keep getting a robot. the number on the letter is {phone}. they ask for her nhs number which is {id} — is it normal that they want that on the phone?"),
        ("assistant", "Yes, that's normal — clinics use it to find the right record, and it's fine to give it when *you* called the number printed on the official letter ({phone}). Tips for getting past the automated menu:\n\n- Have ready: her full name ({name}), date of birth, and the number {id}.\n- Many hospital lines let you press 0 or say \"appointments\" twice to reach a person.\n- Calling right when lines open (usually 8am) tends to be quickest.\n\nAs her carer you may also be asked to confirm she consents, so it helps if she's with you during the call."),
        ("user", "thanks. shes 84 and deaf-ish so ill just put her on speaker"),
    ],
    # 5 forwarded message with signature, lost line breaks
    [
        ("user", """can you pull out the contact details from this forwarded mail into a neat block? our crm export mangled it

---------- Forwarded message ---------
From: {name} <{email}>
Subject: Re: delivery of the samples

Hi {first3},
yes please send the samples to our warehouse, not the office. Thanks!

Best regards,
{name}
Purchasing Manager
{address_qq}
Tel. {phone}"""),
        ("assistant", """Here you go:

**Name:** {name}
**Role:** Purchasing Manager
**Email:** {email}
**Phone:** {phone}
**Address:**
{address_lines}

Note that the `???` in the original are lost line breaks, so I split the address there. Also, she asked for delivery to the warehouse — double-check that this address is the warehouse and not the office before shipping."""),
    ],
    # 6 YAML config with smtp password
    [
        ("user", """my nextcloud mail notifications aren't going out. config:

```yaml
mail:
  smtp_host: smtp.gmail.com
  smtp_port: 465
  smtp_secure: tls
  smtp_user: {email}
  smtp_pass: "{password}"
  from_name: {name}
```"""),
        ("assistant", """Port 465 expects implicit SSL, not STARTTLS. Either change `smtp_secure` to `ssl`, or keep `tls` and use port 587:

```yaml
mail:
  smtp_host: smtp.gmail.com
  smtp_port: 587
  smtp_secure: tls
  smtp_user: {email}
  smtp_pass: "<app password>"
  from_name: {name}
```

Also, Gmail won't accept your normal account login here. Generate an app password under Google Account → Security → App passwords and use that instead of `{password}`. And since you pasted it here, I'd change that one anyway."""),
        ("user", "ugh yeah that's also my gmail login. changing it now"),
    ],
    # 7 French letter to landlord
    [
        ("user", "bonjour, je dois écrire à mon propriétaire {name2} pour lui dire que le chauffage ne marche plus depuis 2 semaines. je m'appelle {name}, j'habite au {street} à {city}. ton assez ferme mais poli stp"),
        ("assistant", "Voici une proposition :\n\n{name}\n{address_lines}\n\nÀ l'attention de M./Mme {name2}\n\nObjet : Panne de chauffage — demande d'intervention urgente\n\nMadame, Monsieur,\n\nJe vous informe que le chauffage du logement que je loue au {street}, {post} {city}, ne fonctionne plus depuis deux semaines. Malgré mon premier signalement oral, aucune intervention n'a eu lieu.\n\nConformément à vos obligations de bailleur, je vous demande de faire réparer l'installation dans les plus brefs délais. Sans réponse de votre part sous huit jours, je me verrai contraint(e) de saisir la commission départementale de conciliation.\n\nVeuillez agréer, Madame, Monsieur, l'expression de mes salutations distinguées.\n\n{name}"),
        ("user", "super merci. tu peux enlever le (e), je suis un homme"),
        ("assistant", "Bien sûr : « …je me verrai contraint de saisir la commission départementale de conciliation. » Le reste ne change pas."),
    ],
    # 8 CSV attendees
    [
        ("user", """excel keeps putting everything in one column when i open this csv, why

full_name;email;phone;diet
{name};{email};{phone};vegetarian
{name2};;;none
{first3} (guest of {first});;;vegan"""),
        ("assistant", """Your file uses semicolons, and your Excel locale expects commas (or the other way around). Options:

1. **Data → From Text/CSV**, pick the file and set the delimiter to *Semicolon*.
2. Or add `sep=;` as the very first line of the file:

```
sep=;
full_name;email;phone;diet
{name};{email};{phone};vegetarian
{name2};;;none
{first3} (guest of {first});;;vegan
```

Also, Excel may strip the leading 0 or + from {phone} — format that column as Text during import to keep it intact."""),
    ],
    # 9 wifi password casual, router
    [
        ("user", "my parents router keeps dropping the wifi every evening. the admin page is 192.168.1.1, i logged in with admin and the one on the sticker which is {password}, what settings should i look at"),
        ("assistant", "Good that you can get in. Things worth checking, roughly in order:\n\n1. **Wireless schedule / \"Wi-Fi timer\"** — some routers have a night mode that switches Wi-Fi off at a set time. That would explain \"every evening\" exactly.\n2. **Channel**: set 2.4 GHz to 1, 6 or 11 instead of Auto.\n3. **Firmware**: update it under System/Maintenance.\n4. **Logs**: look for reboots around the time it drops.\n\nAlso, since the admin login is still the sticker default, change it to something only you know — anyone on the network could otherwise log in."),
        ("user", "omg it was the timer. dad set it to turn off at 9 so my brother {first2} would sleep lol"),
    ],
    # 10 Spanish travel booking, passport
    [
        ("user", "hola! tengo que rellenar el formulario de la aerolínea para el vuelo de mañana y no sé qué poner en 'documento'. mi nombre completo es {name}, mi {id_kind} es {id}. también piden un teléfono de contacto de emergencia, pongo el de mi hermana {first2}: {phone}"),
        ("assistant", "¡Claro! Normalmente el formulario queda así:\n\n- **Nombre:** {name} (exactamente como aparece en el documento)\n- **Tipo de documento:** {id_kind}\n- **Número:** {id}\n- **Contacto de emergencia:** {first2} — {phone}\n\nRevisa que la fecha de caducidad del documento sea válida al menos durante todo el viaje, y que el contacto de emergencia no viaje contigo."),
        ("user", "perfecto, ella se queda en casa. gracias!!"),
    ],
    # 11 Polish bank transfer translation
    [
        ("user", "możesz mi przetłumaczyć na angielski? muszę wysłać do wynajmującego w Dublinie: 'Dzień dobry, przelałem kaucję na konto {iban}, tytuł przelewu: kaucja {name}. Proszę o potwierdzenie.'"),
        ("assistant", "Jasne:\n\n\"Hello, I have transferred the deposit to the account {iban}, payment reference: deposit {name}. Could you please confirm receipt?\"\n\nJeśli to przelew zagraniczny, wynajmujący może też potrzebować kodu BIC — warto go dopisać w przelewie."),
        ("user", "a jak by ten wynajmujący {name2} nie odpowiadał tydzień to co napisać?"),
        ("assistant", "Możesz wysłać krótkie przypomnienie:\n\n\"Dear {name2}, I'm following up on my message from last week regarding the deposit I sent to {iban}. I'd appreciate a short confirmation that it arrived. Kind regards, {name}\""),
    ],
    # 12 Markdown table of shared expenses
    [
        ("user", """split this fairly pls, we're 3 in the flat. who owes whom?

| who | paid for | amount |
|---|---|---|
| {first} | electricity | 96.40 |
| {first2} | internet + netflix | 54.00 |
| {first3} | groceries | 131.20 |

{first3} said to just send everything to her iban {iban}"""),
        ("assistant", """Total is 281.60, so each share is 93.87.

| person | paid | share | balance |
|---|---|---|---|
| {first} | 96.40 | 93.87 | +2.53 |
| {first2} | 54.00 | 93.87 | −39.87 |
| {first3} | 131.20 | 93.87 | +37.33 |

So: **{first2}** pays **37.33** to {first3} (to {iban}) and **2.54** to {first}. If it's easier, {first2} can send the whole 39.87 to {first3}, and {first3} passes 2.54 on to {first}."""),
    ],
    # 13 shell curl with basic auth + JSON body
    [
        ("user", """curl returns 401 but i can log in on the website just fine

curl -X POST https://api.example-shop.io/v2/orders \\
  -u {email}:{password} \\
  -H "Content-Type: application/json" \\
  -d '{{"customer":"{name}","iban":"{iban}","items":[{{"sku":"A-17","qty":2}}]}}'"""),
        ("assistant", """A few common causes:

1. **Special characters in the password.** If `{password}` contains `!`, `$` or `:`, the shell or curl will mangle it. Quote it: `-u '{email}:{password}'` — and note curl splits on the *first* colon only, so colons in the email are the problem, not in the password.
2. **The API may not accept website logins.** Many shops want an API token instead: `-H "Authorization: Bearer $TOKEN"`.
3. Check `curl -v` to see whether the `Authorization: Basic …` header is actually being sent.

Also avoid putting credentials on the command line — they end up in your shell history. Use `-u '{email}'` alone and curl will prompt for the password."""),
    ],
    # 14 Dutch school message
    [
        ("user", "kun je me helpen een berichtje te schrijven aan de juf van mijn dochter? juf {first3} wil dat we ons opgeven voor het schoolreisje maar {first} is die dag bij de orthodontist. mijn mail is {email} als ze iets terug wil sturen"),
        ("assistant", "Natuurlijk! Bijvoorbeeld:\n\nBeste juf {first3},\n\nBedankt voor de informatie over het schoolreisje. Helaas heeft {first} die dag een afspraak bij de orthodontist en kan ze dus niet mee. Mocht de afspraak verschoven kunnen worden, dan laat ik het u zo snel mogelijk weten.\n\nVoor vragen ben ik bereikbaar via {email}.\n\nMet vriendelijke groet,\n{name2}"),
        ("user", "top, maar ik heet {first2} hoor, niet {name2} 😅 gewoon met voornaam ondertekenen"),
        ("assistant", "Oeps! Dan wordt de afsluiting:\n\nMet vriendelijke groet,\n{first2} (moeder van {first})"),
    ],
    # 15 Italian car accident
    [
        ("user", "ciao, ieri ho avuto un piccolo incidente, mi hanno tamponato a un semaforo. devo compilare il CAI (constatazione amichevole). l'altro guidatore è {name2}, io sono {name}, patente {id}. abito in {street}, {post} {city}. come scrivo la descrizione?"),
        ("assistant", "Mi dispiace per l'incidente! Per il CAI:\n\n**Conducente A (tu):** {name}, {street}, {post} {city}, patente n. {id}.\n**Conducente B:** {name2} — chiedi anche il numero di targa e la compagnia assicurativa.\n\n**Descrizione (campo 14 / osservazioni):**\n\"Il veicolo A era fermo al semaforo rosso quando è stato tamponato dal veicolo B, che sopraggiungeva da dietro.\"\n\nNella casella 12 segna per B la voce 8 (\"tamponava, procedendo nello stesso senso e nella stessa fila\"). Fate firmare il modulo a entrambi, altrimenti non vale come constatazione amichevole."),
        ("user", "ok ma {name2} non voleva firmare... che faccio?"),
        ("assistant", "Se {name2} non firma, compila comunque la tua parte, annota targa e dati che hai, eventuali testimoni, e fai foto ai danni. Poi invia tutto alla tua assicurazione entro 3 giorni: aprirà il sinistro anche senza la firma dell'altro conducente."),
    ],
    # 16 card fraud dispute, dictated shapes
    [
        ("user", "theres 3 charges on my card i didnt make, all from some 'DGTL*SVCS' thing, 49.99 each. the card ending is the one {card} - its in my name {name} but my wife {first2} uses it too. the bank app says call them but whats the number usually, and do i cancel the card first?"),
        ("assistant", "Sorry, that's stressful. Here's the order I'd do it in:\n\n1. **Freeze the card right now** in the bank app (most have a \"lock card\" toggle). That stops new charges straight away.\n2. **Call the number on the back of the physical card** — not a number from a search result, scammers run fake \"bank helplines\". Tell them the card {card} shows three unauthorised DGTL*SVCS charges of 49.99.\n3. Ask them to **dispute/charge back** all three and issue a new card with a new number.\n4. Change the passwords of any shops where that card was saved.\n\nYou're usually not liable for fraud you report promptly."),
        ("user", "ok froze it. the guy on the phone asked me to read out the whole number like four-five-... and then the 3 digits on the back. is that ok??"),
        ("assistant", "If *you* called the number on the back of the card, confirming the card number is normal. But a genuine bank almost never needs the 3-digit security code on a fraud call. If it was someone who called *you*, hang up and call the bank back on the official number immediately — the card {card} should then be cancelled for good."),
    ],
    # 17 Czech CV
    [
        ("user", "ahoj, potřebuju udělat hlavičku do životopisu, aby to vypadalo profesionálně. jmenuju se {name}, bydlím {address}, tel {phone}, mail {email}. hlásím se na pozici účetní"),
        ("assistant", "Tady je návrh hlavičky:\n\n**{name}**\nÚčetní\n\n{street} · {post} {city}\n{phone} · {email}\n\nPár tipů:\n- Adresa stačí jen město ({city}), celá ulice dnes v CV není nutná.\n- E-mail by měl působit seriózně — {email} je v pořádku, pokud obsahuje tvé jméno.\n- Fotku přidávej jen pokud ji firma výslovně chce."),
        ("user", "díky! a mám tam dát i datum narození? {first3} říkala že v česku se to dává"),
        ("assistant", "Není to povinné a z hlediska ochrany před diskriminací se to spíš nedoporučuje. Pokud ale firma chce klasické české CV, můžeš ho dát pod kontakt — rozhodnutí je na tobě."),
    ],
    # 18 Hungarian tax id
    [
        ("system", "You are a helpful assistant. Answer in the user's language."),
        ("user", "szia, a munkáltatóm kéri az adóazonosító jelemet az új szerződéshez. az enyém {id}, a nevem {name}. ezt simán emailben elküldhetem nekik a {email} címről?"),
        ("assistant", "Szia {first}! Az adóazonosító jelet a munkáltatónak jogszerűen meg kell adnod, tehát kérhetik. E-mailben elküldheted, de érdemesebb:\n\n- a HR hivatalos címére küldeni, ne egy kolléga privát címére,\n- ha lehet, jelszóval védett PDF-ben, a jelszót pedig SMS-ben átadni.\n\nPélda üzenet:\n\n„Tisztelt HR! Az új munkaszerződéshez szükséges adóazonosító jelem: {id}. Üdvözlettel: {name}”"),
    ],
    # 19 Portuguese online purchase problem
    [
        ("user", "oi! comprei um celular numa loja online e veio com a tela quebrada. paguei no cartão {card} em 10x. já mandei email pra eles do {email} e nada. meu whats é {phone} e eles nem responderam lá. o que eu faço?"),
        ("assistant", "Que chato! Pelo Código de Defesa do Consumidor você tem direito à troca ou ao dinheiro de volta por produto com defeito. Sugestão de passos:\n\n1. Registre uma reclamação no consumidor.gov.br ou no Reclame Aqui, com fotos da tela e o número do pedido.\n2. Ligue para o banco emissor do cartão {card} e peça a **contestação da compra** (chargeback), informando que o produto veio danificado.\n3. Guarde os e-mails enviados de {email} como prova de que você tentou resolver.\n\nSe quiser, escrevo a reclamação pra você."),
        ("user", "quero sim, no nome de {name}"),
        ("assistant", "Aqui vai:\n\n\"Eu, {name}, adquiri um smartphone nesta loja, pago com cartão de crédito em 10 parcelas. O produto chegou com a tela quebrada. Entrei em contato pelo e-mail ({email}) e pelo WhatsApp ({phone}) sem qualquer resposta. Solicito a troca imediata do aparelho ou o estorno integral do valor.\""),
    ],
    # 20 Danish moving house
    [
        ("user", "hej, vi flytter i næste måned og jeg skal huske at melde adresseændring alle steder. ny adresse er {address}. kan du lave en tjekliste? min kæreste {name2} flytter også med"),
        ("assistant", "Selvfølgelig! Tjekliste til flytningen til {street}, {post} {city}:\n\n- [ ] Flytning på borger.dk (for både dig og {name2}) — senest 5 dage efter flytning\n- [ ] Bank: opdater adresse, og tjek at huslejen trækkes fra den rigtige konto\n- [ ] Forsikring (indbo flytter ikke automatisk)\n- [ ] El, internet og varme — aflæs målere på flyttedagen\n- [ ] Læge (vælg evt. ny i det nye område)\n- [ ] Abonnementer, fagforening, a-kasse\n- [ ] Eftersendelse af post hos PostNord"),
        ("user", "udlejeren vil have depositum på {iban} og mit telefonnummer, det er {phone}. skal jeg skrive det hele i en mail?"),
        ("assistant", "Ja, en kort mail er fin, så har I det skriftligt:\n\n\"Hej. Depositum overføres til {iban} i dag. Jeg kan træffes på {phone}. Vh {name}\"\n\nGem kvitteringen for overførslen."),
    ],
    # 21 JSON webhook payload
    [
        ("system", "You are a senior backend engineer. Be concise."),
        ("user", """stripe-like webhook keeps failing our schema validation, what's wrong with the payload?

{{
  "event": "payment.succeeded",
  "customer": {{
    "name": "{name}",
    "email": "{email}",
    "phone": {phone}
  }},
  "payment_method": {{ "type": "card", "number": "{card}" }}
}}"""),
        ("assistant", """`"phone": {phone}` isn't quoted, so it's not valid JSON (and leading zeros / `+` would break it even if it parsed). It must be a string:

```json
{{
  "customer": {{
    "name": "{name}",
    "email": "{email}",
    "phone": "{phone}"
  }}
}}
```

Bigger problem: you're logging the full card number `{card}` in the payload. A real provider would only send the last 4 digits and a token — if your own code builds this, drop `number` entirely or you're in PCI scope."""),
    ],
    # 22 reference letter, possessive names
    [
        ("user", "i have to write a reference for my former intern {name}. he was great with data, slow with emails lol. its for a masters program, they want my contact too: {name2}, {email}, {phone}"),
        ("assistant", "Here's a draft:\n\nTo the Admissions Committee,\n\nI am pleased to recommend {name}, who worked as an intern in my team for six months. {first}'s analytical skills stood out from the first week: he built our monthly reporting pipeline almost single-handedly and explained his results clearly to non-technical colleagues.\n\n{surname} is curious, reliable and takes feedback well. I am confident he will thrive in a demanding master's program.\n\nPlease feel free to contact me with any questions.\n\nSincerely,\n{name2}\n{email} | {phone}\n\n(I left out the part about emails 😉)"),
        ("user", "haha good call. can you make {surname}'s part about the pipeline more specific, it was python + airflow"),
        ("assistant", "Sure: \"…he built our monthly reporting pipeline in Python and Apache Airflow almost single-handedly, cutting the time to produce the report from two days to a few hours.\""),
    ],
    # 23 wedding seating, names, first names
    [
        ("user", "wedding seating help 😭 table 4 has 8 seats. people: {name} and her husband, {name2}, {first3}, my cousin {first} (who CANNOT sit near {first2}), plus 2 kids. how do i arrange it"),
        ("assistant", "That's 7 people, so you have one spare seat. Around the round table, seats 1–8 clockwise:\n\n1. {name}\n2. her husband\n3. kid 1\n4. kid 2\n5. {first3}\n6. {name2}\n7. your cousin {first}\n8. spare\n\nQuick check: is your cousin {first} a different person from {name}, or did you list her twice? And is {first2} seated at table 4 at all? If not, just put {first2}'s table on the far side of the room."),
        ("user", "no sorry different {first} lol. and {first2} is at table 7 so its ok"),
        ("assistant", "Got it! Then table 4: {name}, her husband, kid 1, kid 2, {first3}, {name2}, your cousin {first}, and one spare seat. Table 7 with {first2} is far enough — put it on the opposite side from table 4."),
    ],
    # 24 Excel address split + protected sheet
    [
        ("user", """i have a column like this from our member export, all lower case, how do i split it into street / postcode / city in excel? and the sheet is protected, the password is {password} if that matters

A2: {address_lower}
B2: {name_lower}"""),
        ("assistant", """First unprotect the sheet: **Review → Unprotect Sheet**, enter the password.

For the split, with `{address_lower}` in A2:

- Street (before the comma): `=TRIM(LEFT(A2, FIND(",", A2) - 1))`
- Rest: `=TRIM(MID(A2, FIND(",", A2) + 1, 200))` → gives postcode + city
- Then split the rest at the first space for postcode and city:
  - Postcode: `=LEFT(C2, FIND(" ", C2) - 1)`
  - City: `=MID(C2, FIND(" ", C2) + 1, 200)`

For the names in B2 (`{name_lower}`), `=PROPER(B2)` turns it back into proper case. Careful: postcodes that contain a space (UK/NL/PL style) will split wrongly — for those, Power Query's split by delimiter is easier."""),
        ("user", "our members are mostly in {country} so postcodes are fine. thx"),
    ],
]


HELD_OUT_19_TEMPLATES: list[list[tuple[str, str]]] = [
    # 1 landlord deposit dispute, casual
    [
        ("user", "ok so my landlord still hasnt returned my deposit, its been 7 weeks since i moved out of {address}. can you write him a firm but polite email? my name is {name}, he can send the money to {iban}. his number is {phone} but he never picks up"),
        ("assistant", "Of course. Here's a draft:\n\nSubject: Return of deposit for {street}\n\nDear Landlord,\n\nI vacated the property at {address} seven weeks ago and handed over all keys. I have not yet received my deposit back. Please transfer the full amount to my account, IBAN {iban}, within 14 days.\n\nIf there are deductions you intend to make, please send an itemised list in writing. I have also tried to reach you on {phone} without success.\n\nKind regards,\n{name}"),
        ("user", "perfect thx. maybe add that i have photos from the move-out day"),
        ("assistant", "Sure, add this line after the second paragraph: \"I have dated photographs of every room taken on the day I moved out, which I'm happy to share.\" Then sign off as {first} or {name}, whichever you normally use with him."),
    ],
    # 2 German payroll bank change
    [
        ("user", "Hallo, ich muss unserer Personalabteilung mitteilen, dass sich meine Bankverbindung geändert hat. Kannst du mir eine kurze Mail formulieren? Ich heiße {name}, neue IBAN ist {iban}, meine Steuer-ID {id}. Die HR-Adresse ist {email}."),
        ("assistant", "Gerne, hier ein Vorschlag:\n\nAn: {email}\nBetreff: Änderung der Bankverbindung – {name}\n\nLiebes HR-Team,\n\nbitte überweist mein Gehalt ab der nächsten Abrechnung auf mein neues Konto:\n\nIBAN: {iban}\nKontoinhaber: {name}\n\nZur Zuordnung: meine Steuer-ID lautet {id}.\n\nVielen Dank und viele Grüße\n{first}"),
        ("user", "danke! muss ich die steuer id überhaupt angeben?"),
        ("assistant", "Nicht unbedingt. Für eine Kontoänderung reicht meist dein Name und ggf. die Personalnummer. Die Steuer-ID ({id}) würde ich per Mail eher weglassen, wenn sie nicht ausdrücklich verlangt wird."),
    ],
    # 3 flight booking name mismatch
    [
        ("user", "I booked a flight for my partner but typed her name wrong, the ticket says {name2} but on her passport it's spelled slightly differently. booking email was {email}. do I need her {id_kind} for the correction? it's {id}"),
        ("assistant", "Most airlines allow a minor spelling correction (up to 3 characters) for free or a small fee. You'll usually need to contact them from the booking email ({email}) and provide the passenger's details exactly as printed on the travel document. Keep the {id_kind} ({id}) handy, as they may ask for it to update the API/passenger data, but don't send a scan unless they request it through an official channel."),
        ("user", "ok. their hotline is {phone}, what should i say when i call"),
        ("assistant", "Something like: \"Hi, I have a booking under {email}. The passenger name was entered as {name2}, but it should match the passport exactly. Could you correct the spelling? I can give you the {id_kind} if needed.\" Ask them to confirm the change in writing and to reissue the e-ticket."),
    ],
    # 4 dev: python csv parsing customers
    [
        ("user", "my script crashes on this csv, UnicodeDecodeError somewhere. here's the first rows:\n\n```\nid,full_name,email,phone,card_last\n1,{name},{email},{phone},{card}\n2,{name2},,\"{phone}\",\n```\n\n```python\nimport csv\nwith open('customers.csv') as f:\n    for row in csv.DictReader(f):\n        print(f\"{{row['full_name']}} <{{row['email']}}>\")\n```"),
        ("assistant", "The file is probably not UTF-8 (often cp1252 from Excel), and names like {name} or {name2} may contain accented characters. Open it with an explicit encoding:\n\n```python\nimport csv\nwith open('customers.csv', encoding='utf-8-sig', errors='replace', newline='') as f:\n    for row in csv.DictReader(f):\n        print(f\"{{row['full_name']}} <{{row['email'] or 'n/a'}}>\")\n```\n\nAlso note row 2 has an empty email, so `{name2}` will print with `n/a`. And you probably shouldn't store the full card number ({card}) in a column called `card_last`; keep only the last four digits."),
    ],
    # 5 dev: SQL duplicates
    [
        ("user", "why does this return two rows for the same person??\n\n```sql\nSELECT c.id, c.name, a.line1, a.city\nFROM customers c\nJOIN addresses a ON a.customer_id = c.id\nWHERE lower(c.name) = '{name_lower}';\n```\nresult:\n| id | name | line1 | city |\n|----|------|-------|------|\n| 88 | {name} | {street} | {city} |\n| 88 | {name} | {street} | {city} |"),
        ("assistant", "Customer 88 ({name}) has two rows in `addresses` with identical data, so the join duplicates them. Check with:\n\n```sql\nSELECT * FROM addresses WHERE customer_id = 88;\n```\n\nIf both are '{street}', {post} {city}, delete one and add a unique constraint:\n\n```sql\nALTER TABLE addresses ADD CONSTRAINT uq_addr UNIQUE (customer_id, line1, postcode);\n```\n\nOr use `SELECT DISTINCT` as a quick fix."),
        ("user", "yep there were two, one inserted by the import job. the email column {email} is also duplicated in the users table lol"),
        ("assistant", "Then the import job isn't idempotent. Use an upsert keyed on email, e.g. `INSERT ... ON CONFLICT (email) DO UPDATE`, so re-running it for {email} updates the existing row instead of inserting a new one."),
    ],
    # 6 French: résiliation de bail
    [
        ("user", "Bonjour, j'ai besoin d'une lettre de résiliation de bail. Je m'appelle {name}, j'habite au {street}, {post} {city}. Préavis d'un mois car zone tendue."),
        ("assistant", "Voici un modèle :\n\n{name}\n{address_lines}\n\nObjet : Résiliation du bail – préavis réduit\n\nMadame, Monsieur,\n\nPar la présente, je vous informe de ma décision de résilier le bail du logement situé {street}, {post} {city}. Le logement se trouvant en zone tendue, je bénéficie d'un préavis réduit à un mois.\n\nJe vous prie d'agréer, Madame, Monsieur, mes salutations distinguées.\n\n{name}"),
        ("user", "merci ! et je peux l'envoyer par mail à {email} ou il faut un recommandé ?"),
        ("assistant", "Le mail seul ne suffit pas juridiquement : il faut une lettre recommandée avec accusé de réception, une remise en main propre contre signature, ou un acte d'huissier. Vous pouvez évidemment envoyer une copie à {email} en plus."),
    ],
    # 7 bank card dispute
    [
        ("user", "theres a charge on my card i dont recognise, 249.99 from some 'ONLNSRV*' merchant. card is {card}. what do i tell the bank"),
        ("assistant", "First, don't share the full card number with anyone except the bank itself through its official app or phone line. When you call, say: \"I'm disputing an unauthorised transaction of 249.99 from merchant ONLNSRV* on my card ending in the last four digits of {card}. I'd like to block the card and request a chargeback.\" Ask them for a reference number."),
        ("user", "they want a written statement too. name {name}, phone {phone}"),
        ("assistant", "Here's a short statement:\n\nI, {name}, hereby declare that I did not authorise the transaction of 249.99 from ONLNSRV* on my card {card}. I did not share my card details and still have the card in my possession. I request that the amount be refunded.\n\nContact: {phone}\n\nSigned, {name}"),
    ],
    # 8 Spanish kids' club registration
    [
        ("user", "hola! tengo que rellenar la inscripción del club de natación de mi hija {first3}. el formulario pide nombre del tutor, teléfono, correo. soy {name}, tel {phone}, correo {email}. me ayudas a escribir la parte de 'observaciones'? tiene alergia a la penicilina"),
        ("assistant", "¡Claro! Datos del tutor:\n- Nombre: {name}\n- Teléfono: {phone}\n- Correo: {email}\n\nObservaciones: \"{first3} {surname} es alérgica a la penicilina. En caso de cualquier incidencia médica, por favor contacten inmediatamente con su madre/padre, {first}, en el {phone}.\""),
        ("user", "perfecto, pon también que la recoge a veces su tía {first2}"),
        ("assistant", "Añade: \"Personas autorizadas para recogerla: {name} y su tía {first2}.\" Es posible que el club te pida el DNI de {first2} para la autorización."),
    ],
    # 9 Italian freelance invoice
    [
        ("user", "Ciao, mi serve una fattura semplice per un cliente estero. Io sono {name}, {address}, {country}. Il mio {id_kind} è {id}. Pagamento su IBAN {iban}. Cliente: {name2}, email {email}."),
        ("assistant", "Ecco una bozza:\n\n**FATTURA n. 2024/017**\n\nDa:\n{name}\n{address}\n{country}\n{id_kind}: {id}\n\nA:\n{name2}\n{email}\n\n| Descrizione | Importo |\n|---|---|\n| Consulenza (10 ore) | € 650,00 |\n| **Totale** | **€ 650,00** |\n\nPagamento entro 30 giorni tramite bonifico:\nIBAN {iban}\nIntestatario: {name}\n\nOperazione non soggetta a IVA (reverse charge)."),
        ("user", "ottimo, ma {name2} vuole la fattura in inglese"),
        ("assistant", "Nessun problema: \"INVOICE no. 2024/017 — From: {name}, {address}, {country} — To: {name2} — Consulting (10 hours) € 650.00 — Please pay to IBAN {iban} within 30 days. Reverse charge.\""),
    ],
    # 10 Polish residence form
    [
        ("user", "Cześć, wypełniam wniosek o zameldowanie. Nie wiem co wpisać w 'adres pobytu'. Mieszkam na {street}, kod {post}, miasto {city}. Numer dokumentu: {id}"),
        ("assistant", "W polu „adres pobytu” wpisz dokładnie:\n\nUlica i numer: {street}\nKod pocztowy: {post}\nMiejscowość: {city}\n\nW części „dokument tożsamości” podaj rodzaj ({id_kind}) i numer {id}. Pamiętaj o podpisie właściciela mieszkania, jeśli go wymagają."),
        ("user", "a jak się nazywa właściciel to {name2}, trzeba jego pesel?"),
        ("assistant", "Zazwyczaj nie: wystarczy podpis {name2} potwierdzający pobyt albo umowa najmu. PESEL właściciela nie jest wymagany we wniosku."),
    ],
    # 11 airbnb wifi password, casual
    [
        ("user", "writing the welcome note for my airbnb guests, can you make it sound friendly? key box at the side door, code 4471. wifi is 'FlatHome5G' and the key for it is {password}. address {address}. if theres a problem call my cousin {first2} on {phone}"),
        ("assistant", "Welcome to {street}! 🏡\n\nWe're so glad you're here. A few things to get you settled:\n\n🔑 **Keys**: in the key box by the side door, code 4471.\n📶 **Wi-Fi**: network FlatHome5G, passphrase {password}\n📍 **Address** (for taxis and deliveries): {address}\n\nIf anything goes wrong, {first2} lives nearby and is happy to help: {phone}.\n\nEnjoy your stay!\n{first}"),
        ("user", "lol nice. maybe dont put the wifi thing in bold"),
        ("assistant", "Fair enough, just write it as: Wi-Fi: FlatHome5G / {password}."),
    ],
    # 12 Dutch doctor / insurance
    [
        ("user", "Hoi, mijn zorgverzekeraar heeft een declaratie afgewezen. Ik wil bezwaar maken. Naam: {name}, polisnummer {id}, adres {address}. Telefoon {phone}."),
        ("assistant", "Hier is een conceptbrief:\n\n{name}\n{address}\nTel: {phone}\n\nBetreft: Bezwaar tegen afwijzing declaratie – polisnummer {id}\n\nGeachte heer/mevrouw,\n\nHierbij maak ik bezwaar tegen uw besluit om mijn declaratie van de fysiotherapeut niet te vergoeden. Volgens mijn aanvullende verzekering heb ik recht op 18 behandelingen per jaar; ik heb er tot nu toe 9 gebruikt.\n\nIk verzoek u het besluit te herzien.\n\nMet vriendelijke groet,\n{name}"),
        ("user", "top. moet ik de verwijzing van de huisarts meesturen?"),
        ("assistant", "Ja, stuur een kopie van de verwijzing mee en vermeld op elke bijlage je polisnummer {id}, zodat ze het dossier van {surname} snel kunnen terugvinden."),
    ],
    # 13 dev: YAML config with smtp password
    [
        ("system", "You are a helpful assistant for software developers."),
        ("user", "mailer keeps failing with 535 auth error. config:\n\n```yaml\nsmtp:\n  host: smtp.office365.com\n  port: 587\n  user: {email}\n  pass: \"{password}\"\n  from_name: \"{name}\"\n  starttls: true\n```"),
        ("assistant", "535 means the server rejected the credentials. A few things to check:\n\n1. Office 365 often has SMTP AUTH disabled per mailbox; an admin has to enable it for {email}.\n2. If MFA is on, the account password `{password}` won't work; you need an app password.\n3. Quote special characters in YAML, which you already do.\n\nAlso, you've just pasted a live credential into a chat. I'd rotate the password for {email} after fixing this and load it from an env var:\n\n```yaml\n  pass: ${{SMTP_PASS}}\n```"),
        ("user", "it was enabled. turned out {first} from IT had changed it and not told me, new one works"),
    ],
    # 14 dev: JSON API response
    [
        ("user", "the frontend shows 'undefined' for the customer name, here's the api response:\n\n```json\n{{\n  \"customer\": {{\n    \"fullName\": \"{name}\",\n    \"contact\": {{\"email\": \"{email}\", \"tel\": \"{phone}\"}},\n    \"billing\": {{\"address\": \"{address_qq}\", \"card\": \"{card}\"}}\n  }}\n}}\n```\nand in react i do `customer.full_name`"),
        ("assistant", "The key is camelCase: `fullName`, not `full_name`. Use `customer.fullName` and it will render \"{name}\".\n\nTwo other issues in that payload:\n- The address `{address_qq}` contains `???` where line breaks were lost, probably an encoding issue when the address was imported. Store lines separately or use `\\n`.\n- The API returns the full card number `{card}` to the browser. That should be masked (e.g. last 4 digits only) at the backend; PCI DSS doesn't allow exposing the PAN like that."),
    ],
    # 15 forwarded email with signature
    [
        ("user", "can you summarise this for me and tell me what I need to reply\n\n---------- Forwarded message ---------\nFrom: {name2}\nSubject: Re: office move\n\nHi all,\n\nAs of 1 March we'll be at the new office, {street}, {city}. Parking permits must be requested by Friday. Please send your licence plate to facilities.\n\nBest,\n{name2}\nOffice Manager\nT: {phone}\nE: {email}"),
        ("assistant", "Summary: {first2} says the office moves to {street}, {city} on 1 March, and parking permits need to be requested by Friday.\n\nWhat you need to do: reply to {email} with your licence plate number before Friday if you want a parking permit. If you have questions, {first2} can be reached on {phone}."),
        ("user", "ok write the reply, plate is AB-123-CD, sign as {first}"),
        ("assistant", "Hi {first2},\n\nThanks for the update. I'd like a parking permit for the new office at {street}. My licence plate is AB-123-CD.\n\nBest,\n{first}"),
    ],
    # 16 Czech employer confirmation
    [
        ("user", "Ahoj, potřebuju potvrzení o zaměstnání pro banku (hypotéka). Zaměstnanec: {name}, bytem {address}, rodné číslo {id}. Nastoupil 1. 3. 2019, hlavní pracovní poměr na dobu neurčitou."),
        ("assistant", "Tady je návrh:\n\n**POTVRZENÍ O ZAMĚSTNÁNÍ**\n\nPotvrzujeme, že pan {name}, nar./r. č. {id}, bytem {address}, je u naší společnosti zaměstnán od 1. 3. 2019 v hlavním pracovním poměru na dobu neurčitou. Zaměstnanec není ve zkušební ani výpovědní lhůtě.\n\nV {city} dne ..........\n\nPodpis a razítko zaměstnavatele"),
        ("user", "díky, a můžeš tam dát ještě kontakt na mzdovou účetní {name2}, {email}?"),
        ("assistant", "Jasně, na konec přidej: „Kontaktní osoba pro ověření údajů: {name2}, mzdová účetní, {email}.“"),
    ],
    # 17 Hungarian tax / bank
    [
        ("user", "Szia! Az adóbevallásomhoz kell egy meghatalmazás a könyvelőmnek. Nevem {name}, adóazonosító jel: {id}. A visszatérítést erre a számlára kérem: {iban}."),
        ("assistant", "Íme egy egyszerű meghatalmazás-minta:\n\nMEGHATALMAZÁS\n\nAlulírott {name} (adóazonosító jel: {id}) meghatalmazom {name2} könyvelőt, hogy a 2023. évi személyijövedelemadó-bevallásomat nevemben benyújtsa.\n\nAz esetleges adó-visszatérítést a következő bankszámlára kérem utalni: {iban}.\n\nKelt: {city}, ..........\n\n..........................\n{name}"),
        ("user", "ja, a könyvelő neve tényleg {name2}, honnan tudtad? 😄"),
        ("assistant", "Csak helykitöltőnek írtam be, de ha stimmel, annál jobb! Ellenőrizd, hogy {surname} és a könyvelő neve pontosan úgy szerepeljen, ahogy a személyi igazolványban."),
    ],
    # 18 Danish daycare
    [
        ("user", "Hej, kan du hjælpe mig med en besked til børnehaven? {first3} bliver hentet af sin morfar {first2} i dag, ikke af mig. Hans nummer er {phone}."),
        ("assistant", "Selvfølgelig:\n\n\"Hej! I dag bliver {first3} hentet af sin morfar, {first2}, omkring kl. 15. Hvis der er noget, kan I ringe til ham på {phone} eller til mig. Mange hilsner, {first}\""),
        ("user", "tak! skal jeg skrive mit efternavn {surname} også? der er to børn med samme navn"),
        ("assistant", "Ja, godt tænkt. Skriv \"{first3} {surname}\" i første linje, så er der ingen tvivl om, hvilket barn det gælder."),
    ],
    # 19 Brazilian Portuguese: account / card / password
    [
        ("user", "oi, alguém fez compra na minha conta da loja online com meu cartão {card}. já troquei a senha, a antiga era {password}, acho que vazou porque eu usava em todo lugar 😩 o que mais eu faço?"),
        ("assistant", "Sinto muito! Passos recomendados:\n\n1. Ligue para o banco e bloqueie o cartão {card}; peça a contestação da compra.\n2. Troque a senha em todos os serviços onde você usava \"{password}\", começando pelo e-mail {email}.\n3. Ative a verificação em duas etapas.\n4. Use um gerenciador de senhas para não repetir mais.\n\nQuer que eu escreva a mensagem de contestação para a loja?"),
        ("user", "quero sim, meu nome é {name} e o email da conta é {email}"),
        ("assistant", "Prezados,\n\nMeu nome é {name}, titular da conta vinculada ao e-mail {email}. Identifiquei uma compra não autorizada feita com meu cartão {card}. Solicito o cancelamento do pedido e o estorno integral do valor.\n\nAtenciosamente,\n{name}"),
    ],
    # 20 Slack-like export with address_qq
    [
        ("system", "Exported conversation from #logistics"),
        ("user", "can someone check why the courier label came out weird? the customer address in the order is:\n{address_qq}\nrecipient {name}, {phone}"),
        ("assistant", "The `???` are line breaks that got lost when the order was exported (probably the CSV was saved in a non-UTF-8 encoding). The address should read:\n\n{address_lines}\n\nRecipient: {name}, {phone}. Reprint the label with the three lines split and it should be fine."),
        ("user", "thx, reprinted. fyi {first2} said the same thing happened to another order last week"),
    ],
    # 21 dev: shell log grep for password reset
    [
        ("user", "user says the password reset email never arrived. i grepped the logs:\n\n```\n$ grep -i '{email}' /var/log/app/mailer.log | tail -3\n2024-05-02T09:14:11Z INFO queue reset_password to={email} user_id=4412\n2024-05-02T09:14:12Z WARN smtp 550 5.1.1 mailbox unavailable to={email}\n2024-05-02T09:14:12Z DEBUG payload name=\"{name_lower}\" temp_pw={password}\n```"),
        ("assistant", "The 550 5.1.1 means the receiving server says the mailbox {email} doesn't exist; check with the user for a typo in their address.\n\nMore urgent: your DEBUG line logs the temporary credential in plain text (`temp_pw={password}`). Remove that field from the log statement, invalidate that temp password for user 4412, and purge it from the log files:\n\n```bash\nsed -i 's/temp_pw=[^ ]*/temp_pw=REDACTED/' /var/log/app/mailer.log\n```"),
        ("user", "oof yeah. turns out {name} spelled their gmail wrong at signup"),
        ("assistant", "That explains it. Have support update the email on user 4412 after verifying identity, then trigger a new reset. Consider adding email verification at signup so typos get caught early."),
    ],
    # 22 numbers dictated, phone booking
    [
        ("user", "I'm on hold with the hotel and they want my details, I'll read them off to you so I don't mess up: name {name}, card number is... {card} expiring oh-nine twenty-seven, mobile is plus {phone}, and they asked for my {id_kind} as well which is {id}. can you put that in a tidy block I can read out"),
        ("assistant", "Here you go:\n\nName: {name}\nCard: {card}, expiry 09/27\nMobile: {phone}\n{id_kind}: {id}\n\nTip: read the card number in groups of four and ask them to read it back. And it's worth checking whether the hotel really needs your {id_kind} by phone; usually they only ask for it at check-in."),
        ("user", "they said its fine, they'll take the id at check in. thx"),
    ],
    # 23 markdown table group travel list
    [
        ("user", "Organising a team trip to Lisbon. Can you make a table for the travel agent? People:\n- {name}, passport {id}, {phone}\n- {name2}, same hotel room as {first}\n- {first3} (surname tba)\nContact for the group: me, {email}"),
        ("assistant", "| # | Traveller | Passport | Phone | Notes |\n|---|---|---|---|---|\n| 1 | {name} | {id} | {phone} | Shares room with {first2} |\n| 2 | {name2} | – | – | Shares room with {first} |\n| 3 | {first3} | – | – | Surname to be confirmed |\n\nGroup contact: {email}\n\nYou'll still need passport numbers and phones for {first2} and {first3} before the agent can issue tickets."),
        ("user", "great, {first2}'s details are coming tomorrow"),
    ],
    # 24 dev: pandas dedupe
    [
        ("system", "You are a Python data engineering assistant."),
        ("user", "dedup isn't working, these two should be one customer:\n\n```python\ndf = pd.DataFrame([\n    {{\"name\": \"{name}\", \"addr\": \"{address}\", \"iban\": \"{iban}\"}},\n    {{\"name\": \"{name} \", \"addr\": \"{address_lower}\", \"iban\": \"{iban}\"}},\n])\ndf.drop_duplicates(subset=[\"name\", \"addr\"])\n```"),
        ("assistant", "`drop_duplicates` compares exact values. Row 2 has a trailing space in the name and the address is lower-cased (\"{address_lower}\" vs \"{address}\"). Normalise first:\n\n```python\nkey = df.assign(\n    name_n=df['name'].str.strip().str.casefold(),\n    addr_n=df['addr'].str.strip().str.casefold(),\n)\ndf = df.loc[~key.duplicated(subset=['name_n', 'addr_n'])]\n```\n\nSince both rows share IBAN {iban}, you could also dedupe on the IBAN alone, once spaces are removed: `df['iban'].str.replace(' ', '')`."),
        ("user", "works. also {name2} shows up 3 times with different spellings, fuzzy matching next i guess"),
    ],
]


HELD_OUT_20_TEMPLATES: list[list[tuple[str, str]]] = [
    # 1 German WhatsApp export, football club
    [
        ("user", """kannst du mir aus dem chat eine kurze zusammenfassung machen? ist aus unserer whatsapp gruppe vom verein

[12.03.24, 19:02:11] {name}: Hallo zusammen, Training am Samstag fällt aus wegen Platzsperre
[12.03.24, 19:04:45] {first2}: schade. wer übernimmt dann die trikotwäsche diese woche?
[12.03.24, 19:05:30] {name}: ich mach das. Mitgliedsbeitrag bitte bis Ende März auf {iban} überweisen, Verwendungszweck Name + Jahrgang
[12.03.24, 19:07:02] {first2}: ok. wenn was ist, ich bin unter {phone} erreichbar, auch abends
[12.03.24, 19:08:15] {name}: 👍"""),
        ("assistant", """Zusammenfassung:

- Das Training am Samstag fällt wegen Platzsperre aus (Info von {name}).
- {name} übernimmt diese Woche die Trikotwäsche.
- Der Mitgliedsbeitrag soll bis Ende März auf das Konto {iban} überwiesen werden, Verwendungszweck: Name + Jahrgang.
- {first2} ist bei Fragen unter {phone} erreichbar, auch abends."""),
    ],
    # 2 English support agent, Slack thread
    [
        ("system", "You are a helpful assistant for the customer support team at an online shop."),
        ("user", """can u help me write a reply to this customer. pasted from our slack #escalations thread:

Mar 4th at 10:14 AM
Jenna: customer {name} says she was charged twice, card ending in the last 4 of {card}
Mar 4th at 10:16 AM
Marco: full number she sent in chat (ugh) is {card}, pls don't paste it anywhere else
Mar 4th at 10:17 AM
Jenna: her email is {email}, she wants a refund to the same card"""),
        ("assistant", """Here's a draft you can send to {email}:

Hi {first},

Thank you for reaching out, and I'm sorry about the double charge. I've checked your order and can confirm the duplicate payment. We've issued a refund to the same card, and it should appear on your statement within 5–7 business days.

For your security, please don't send your full card number over chat or email in the future; we'll never need it to process a refund.

Kind regards,
Customer Support

Also a heads-up: since the full number ({card}) was posted in Slack, you might want to ask Marco to delete that message."""),
    ],
    # 3 French recruiter
    [
        ("user", "Bonjour, je suis recruteuse et je dois envoyer une convocation à un entretien. Le candidat s'appelle {name}, il habite {address}. Son mail c'est {email} et son portable {phone}. Tu peux me rédiger un mail formel ? Entretien jeudi à 14h, dans nos locaux à {city}."),
        ("assistant", """Bien sûr, voici une proposition :

Objet : Convocation à un entretien

Bonjour Monsieur {surname},

Suite à l'examen de votre candidature, nous avons le plaisir de vous inviter à un entretien le jeudi à 14h00 dans nos locaux à {city}.

Merci de nous confirmer votre présence en répondant à ce message. En cas d'empêchement, vous pouvez également nous joindre ; nous vous recontacterons au {phone} si nécessaire.

Nous vous prions d'agréer, Monsieur {surname}, l'expression de nos salutations distinguées.

—
À envoyer à : {email}"""),
        ("user", "parfait merci. tu peux aussi mettre l'adresse du candidat en haut comme dans une lettre ?"),
        ("assistant", """Voici l'en-tête à ajouter en haut à droite :

{name}
{address_lines}

Le reste du courrier reste identique."""),
    ],
    # 4 Spanish clinic booking
    [
        ("user", "hola, necesito escribir un correo a la clínica para cambiar la cita de mi madre. se llama {name}, su {id_kind} es {id} y el teléfono de contacto es el {phone}. la cita era el martes 9 a las 10 y queremos moverla a la semana siguiente"),
        ("assistant", """Claro, aquí tienes un borrador:

Asunto: Solicitud de cambio de cita – {name}

Buenos días:

Les escribo en nombre de mi madre, {name} ({id_kind}: {id}), que tiene una cita programada para el martes 9 a las 10:00. Por motivos personales no podrá asistir, y nos gustaría cambiarla a algún día de la semana siguiente.

Pueden contactarnos en el teléfono {phone} para confirmar la nueva fecha.

Muchas gracias de antemano.

Un saludo cordial"""),
    ],
    # 5 English Discord event planning, casual
    [
        ("user", """ok so heres the discord convo, help me make a checklist lol

{first} — Today at 8:41 PM
party is at my place, {address}. come thru after 7
{first2} — Today at 8:43 PM
wifi?? last time i couldnt connect
{first} — Today at 8:44 PM
network is {surname}_home and the pass is {password} (case sensitive!!)
{first3} — Today at 8:50 PM
ill bring chips + the speaker"""),
        ("assistant", """Here's a checklist from the thread:

**Party at {first}'s place**
- 📍 Where: {address}
- 🕖 When: after 7 PM
- 📶 Wi-Fi: network `{surname}_home`, password `{password}` (case-sensitive)

**Who's bringing what**
- [ ] {first3}: chips + speaker
- [ ] {first2}: ?
- [ ] {first}: hosting

Want me to turn this into a message you can pin in the channel?"""),
    ],
    # 6 Polish Telegram export, card + password
    [
        ("user", """Cześć, wklejam rozmowę z telegrama, możesz powiedzieć czy to nie jest jakiś scam?

{name}, [05.02.2024 21:13]
Dzień dobry, tu obsługa banku. Potrzebujemy potwierdzić Pana kartę

{name}, [05.02.2024 21:14]
Proszę podać pełny numer karty oraz hasło do bankowości

ja, [05.02.2024 21:20]
numer to {card}, a hasło {password}

{name}, [05.02.2024 21:21]
Dziękujemy, proszę czekać na SMS"""),
        ("assistant", """Niestety to wygląda na klasyczne oszustwo (phishing). Bank nigdy nie prosi przez Telegram o pełny numer karty ani o hasło do bankowości.

Co zrobić od razu:
1. Zadzwoń do swojego banku (numer z tyłu karty) i zastrzeż kartę {card}.
2. Zmień hasło do bankowości – to, które podałeś ({password}), trzeba uznać za ujawnione.
3. Nie podawaj kodów z SMS-ów, jeśli przyjdą.
4. Zgłoś konto „{name}” na Telegramie jako spam i zgłoś sprawę na policję lub do CERT Polska."""),
    ],
    # 7 English CRM notes as JSON
    [
        ("system", "You assist support agents with CRM data cleanup. Answer concisely."),
        ("user", """this CRM export has the fields mixed up, can you fix the JSON so phone is in phone etc

{{
  "customer": "{email}",
  "contact_email": "{phone}",
  "phone": "{name}",
  "address": "{address_qq}",
  "notes": "verified w/ {id_kind} {id} on call, wants callback"
}}"""),
        ("assistant", """Here's the corrected record. I also split the address, which had "???" where the line breaks were lost:

```json
{{
  "customer": "{name}",
  "contact_email": "{email}",
  "phone": "{phone}",
  "address": {{
    "street": "{street}",
    "postcode": "{post}",
    "city": "{city}",
    "country": "{country}"
  }},
  "notes": "Verified with {id_kind} {id} on call, wants callback"
}}
```"""),
    ],
    # 8 Dutch sports club membership
    [
        ("user", "Hoi! Ik ben penningmeester van onze hockeyclub. Kun je een welkomstmail schrijven voor een nieuw lid? Naam: {name}, adres {address}, e-mail {email}. De contributie wordt per kwartaal afgeschreven van {iban}."),
        ("assistant", """Natuurlijk! Hier is een voorstel:

Onderwerp: Welkom bij de club!

Beste {first},

Wat leuk dat je lid bent geworden van onze hockeyclub! Hieronder vind je ter controle de gegevens die we van je hebben ontvangen:

Naam: {name}
Adres:
{address_lines}
E-mail: {email}
IBAN voor automatische incasso: {iban}

De contributie wordt elk kwartaal automatisch afgeschreven. Kloppen deze gegevens niet? Laat het ons dan even weten.

Sportieve groet,
De penningmeester"""),
    ],
    # 9 Italian clinic appointment
    [
        ("user", "ciao, devo confermare un appuntamento dal dentista per mio marito, {name}. mi scrivi un messaggio breve? il suo cell è {phone} e la mail {email}. abitiamo in {street} a {city}"),
        ("assistant", """Certo, ecco un messaggio che puoi inviare:

Buongiorno,
scrivo per confermare l'appuntamento del signor {name}. Per qualsiasi comunicazione potete contattarlo al numero {phone} oppure all'indirizzo {email}.

Indirizzo per eventuale documentazione: {street}, {post} {city}.

Grazie e cordiali saluti"""),
        ("user", "perfetto, ma mettilo a nome mio, {name2}, sono io che scrivo"),
        ("assistant", """Ecco la versione aggiornata:

Buongiorno,
sono {name2} e scrivo per confermare l'appuntamento di mio marito, {name}. Potete contattarlo al {phone} o scrivere a {email}.

Cordiali saluti,
{name2}"""),
    ],
    # 10 Portuguese support ticket
    [
        ("user", """Oi, sou atendente e recebi esse ticket, me ajuda a responder?

Ticket #48213
Cliente: {name}
CPF/documento ({id_kind}): {id}
Endereço de entrega: {address_qq}
Problema: "comprei com o cartão {card} e o pedido nunca chegou, já faz 3 semanas"
"""),
        ("assistant", """Claro! Antes de responder, uma observação: o endereço veio com "???" no lugar das quebras de linha, então o correto é:

{address_lines}

Sugestão de resposta:

Olá, {first}, tudo bem?

Sentimos muito pelo atraso na entrega do seu pedido. Verificamos que ele foi enviado para {street}, {post} {city}. Já abrimos uma investigação com a transportadora e retornaremos em até 48 horas.

Caso o pedido não seja localizado, faremos o estorno integral no cartão utilizado na compra.

Atenciosamente,
Equipe de Atendimento

Dica: evite copiar o número completo do cartão ({card}) na resposta ao cliente."""),
    ],
    # 11 Czech recruiter
    [
        ("user", "Ahoj, potřebuju napsat odmítavý e-mail uchazečce. Jmenuje se {name}, email {email}, telefon {phone}. Byla fajn, ale vzali jsme někoho se zkušenostmi s SAP. Chci ji mít v databázi pro příští pozice."),
        ("assistant", """Jasně, tady je návrh:

Předmět: Výsledek výběrového řízení

Dobrý den, paní {surname},

děkujeme za Váš čas a zájem o pozici v naší společnosti. Pohovor s Vámi byl velmi příjemný, nakonec jsme se však rozhodli pro kandidáta s praxí v systému SAP.

Rádi bychom si Vaše kontaktní údaje ({email}, {phone}) ponechali v naší databázi a ozvali se Vám při otevření dalších pozic. Pokud s tím nesouhlasíte, dejte nám prosím vědět.

S pozdravem"""),
        ("user", "díky. a ještě mi napiš jednu větu do interní poznámky v ATS o {first}"),
        ("assistant", "Poznámka: {name} – silná komunikace a dobrý dojem z pohovoru, zamítnuta kvůli chybějící praxi se SAP; souhlasí s uchováním kontaktu, vhodná pro budoucí pozice (kontakt: {phone})."),
    ],
    # 12 Hungarian event planning
    [
        ("user", "szia! szülinapi bulit szervezek a barátnőmnek, {name}-nak. A helyszín {name2} lakása lesz: {address}. Írnál egy meghívót? Visszajelzést a {phone} számra kérek, SMS-ben."),
        ("assistant", """Persze! Íme egy meghívó:

🎉 Meglepetés szülinapi buli! 🎉

Kedves Barátunk!

Szeretettel meghívunk {name} születésnapi bulijára!
Helyszín: {name2} lakása, {address}
Időpont: szombat este 7 óra

Kérlek, jelezz vissza SMS-ben a {phone} számon, hogy tudjunk tervezni.
Psszt, {first} nem tud róla, úgyhogy titok! 🤫"""),
    ],
    # 13 Danish sports club
    [
        ("user", "hej, jeg er kasserer i vores badmintonklub og skal sende login til vores nye hjemmeside til {first}. brugernavn er {email} og koden er {password}. og så skal kontingentet betales til {iban}. kan du skrive en kort besked?"),
        ("assistant", """Selvfølgelig, her er et forslag:

Hej {first}!

Velkommen til klubbens nye hjemmeside. Du kan logge ind med:
Brugernavn: {email}
Adgangskode: {password}

Skift gerne adgangskoden første gang du logger ind.

Husk også at betale kontingent til kontoen {iban}, og skriv dit navn, {name}, i beskeden.

Sportslig hilsen
Kassereren"""),
    ],
    # 14 English Messenger export, lowercase
    [
        ("user", """can u pull the address n number out of this messenger chat, im putting it in my contacts

{name_lower}: hey its me, new place is {address_lower}
{name_lower}: and new number {phone}
me: omg finally lol
{name_lower}: come visit!! buzzer says {surname}"""),
        ("assistant", """Here's what I found:

- **Name:** {name}
- **Address:** {address}
- **Phone:** {phone}
- **Note:** buzzer says "{surname}"

Want it as a vCard?"""),
        ("user", "yes pls"),
        ("assistant", """```
BEGIN:VCARD
VERSION:3.0
FN:{name}
N:{surname};{first};;;
TEL;TYPE=CELL:{phone}
ADR;TYPE=HOME:;;{street};{city};;{post};{country}
END:VCARD
```"""),
    ],
    # 15 SQL for club members
    [
        ("user", """my INSERT keeps failing on the members table for our running club, what's wrong?

INSERT INTO members (full_name, email, phone, iban)
VALUES ('{name}', '{email}', {phone}, '{iban}');"""),
        ("assistant", """The phone value isn't quoted, so the database tries to parse `{phone}` as a number or expression, and spaces, `+` or dashes break it. Store phone numbers as text:

```sql
INSERT INTO members (full_name, email, phone, iban)
VALUES ('{name}', '{email}', '{phone}', '{iban}');
```

If the name ever has an apostrophe (e.g. O'Brien), use parameterized queries instead:

```python
cur.execute(
    "INSERT INTO members (full_name, email, phone, iban) VALUES (%s, %s, %s, %s)",
    ("{name}", "{email}", "{phone}", "{iban}"),
)
```"""),
    ],
    # 16 CSV of applicants
    [
        ("user", """sort these applicants by who applied first pls

name,email,phone,applied
{name2},{email},{phone},2024-05-14
{name},{first_lower}.{surname}@example.org,+44 7700 900123,2024-05-02
{first3} Novak,{first3}.novak@example.net,n/a,2024-05-09"""),
        ("assistant", """Sorted by application date (earliest first):

```csv
name,email,phone,applied
{name},{first_lower}.{surname}@example.org,+44 7700 900123,2024-05-02
{first3} Novak,{first3}.novak@example.net,n/a,2024-05-09
{name2},{email},{phone},2024-05-14
```

{first} applied first, and {first2} applied last."""),
    ],
    # 17 YAML config for event registration
    [
        ("user", """our tournament signup bot won't send mails, here's the config. ignore that the creds are in there i'll rotate them

smtp:
  host: smtp.gmail.com
  port: 465
  user: {email}
  pass: {password}
  tls: false
event:
  venue: "{address}"
  contact: "{name}" """),
        ("assistant", """With Gmail on port 465 you need implicit TLS. `tls: false` makes the client try a plain connection, and the server drops it. Either:

```yaml
smtp:
  host: smtp.gmail.com
  port: 465
  user: {email}
  pass: {password}
  ssl: true
```

or use port 587 with `starttls: true`. Also, Gmail won't accept your normal account password here. You need an App Password, so if `{password}` is your regular login, that's likely the second problem (and yes, rotate it since it's been shared).

The `event` block looks fine: venue "{address}", contact {name}."""),
    ],
    # 18 German support letter, card + id
    [
        ("user", "Hallo, ich muss für meinen Vater {name} einen Widerspruch an die Bank schreiben, es wurde von seiner Karte {card} zweimal abgebucht. Seine Adresse: {address}. Er hat sich am Telefon mit {id_kind} {id} ausgewiesen. Bitte förmlich."),
        ("assistant", """Gerne, hier ein Entwurf:

{name}
{address_lines}

Betreff: Widerspruch gegen doppelte Abbuchung

Sehr geehrte Damen und Herren,

hiermit widerspreche ich der doppelten Belastung meiner Karte mit der Nummer {card}. Der Betrag wurde zweimal abgebucht, obwohl nur ein Kauf getätigt wurde.

Zur Identifikation: Ich habe mich bereits telefonisch mit meiner {id_kind} ({id}) ausgewiesen.

Ich bitte um Erstattung des doppelt abgebuchten Betrags und um eine schriftliche Bestätigung.

Mit freundlichen Grüßen
{name}"""),
    ],
    # 19 French clinic, phone dictated
    [
        ("user", "salut, j'ai noté au téléphone le numéro du cabinet du Dr {surname} : « zéro six… enfin c'est {phone} ». et la secrétaire m'a demandé mon numéro de {id_kind}, j'ai donné {id}. tu peux me faire un rappel pour mon agenda ?"),
        ("assistant", """Voici un rappel prêt à copier :

📅 Rendez-vous – cabinet du Dr {surname}
📞 Téléphone du cabinet : {phone}
🪪 {id_kind} communiqué : {id}
📝 À apporter : pièce d'identité, ordonnance éventuelle

Tu veux que j'ajoute une alerte la veille ?"""),
    ],
    # 20 Spanish WhatsApp padel group
    [
        ("user", """me ayudas a organizar esto? es del grupo de pádel

[18/04/2024, 22:10] {first}: chicos reservé pista para el domingo 10:00
[18/04/2024, 22:11] {first2}: genial!! cuánto es?
[18/04/2024, 22:12] {first}: 24€ en total, bizum al {phone}
[18/04/2024, 22:15] {first3}: la app de reservas me pide usuario, cuál era?
[18/04/2024, 22:16] {first}: el mío, {email} y la contra es {password}, no la cambiéis porfa"""),
        ("assistant", """Resumen para el grupo:

🎾 **Pádel – domingo 10:00**
- Pista reservada por {first}
- Precio: 24 € en total (6 € por persona si sois 4)
- Pago: Bizum a {first} al {phone}

🔑 Acceso a la app de reservas: usuario {email}, contraseña {password}

Ojo: compartir la contraseña en el grupo es arriesgado. Quizás {first} pueda invitaros desde la app en vez de pasar su cuenta."""),
    ],
    # 21 English job applicant cover letter
    [
        ("user", "help me write a cover letter header and closing. im {name}, living at {address}, my email is {email} and phone is {phone}. applying for warehouse supervisor at a logistics company"),
        ("assistant", """Here's a header and closing:

**Header**

{name}
{street}
{post} {city}
{email} | {phone}

Dear Hiring Manager,

...

**Closing**

Thank you for considering my application. I'd welcome the chance to discuss how my experience could support your team, and you can reach me at {phone} or {email} at any time.

Sincerely,
{name}"""),
        ("user", "thx. should I put my full address or just city these days?"),
        ("assistant", "These days city and country are usually enough, e.g. \"{city}, {country}\". A full street address like {street} isn't needed until you get an offer, and leaving it out also protects your privacy when your CV gets passed around."),
    ],
    # 22 Polish support with shell
    [
        ("user", """hej, klient napisał do nas na czacie i wkleił to. Czy ten skrypt jest OK do resetu konta?

curl -X POST https://api.example.com/v1/login \\
  -d "email={email}" \\
  -d "haslo={password}"

a potem napisał „moja karta {card} nie przechodzi przy płatności”"""),
        ("assistant", """Skrypt technicznie zadziała, ale ma kilka problemów:

1. Hasło (`{password}`) idzie w parametrach, więc zostanie w historii powłoki. Lepiej tak:
```bash
read -s PASS
curl -X POST https://api.example.com/v1/login \\
  --data-urlencode "email={email}" \\
  --data-urlencode "haslo=$PASS"
```
2. Klient ujawnił hasło na czacie, więc poproś go o zmianę hasła po zalogowaniu.
3. Numer karty {card} wklejony na czacie warto zamaskować w systemie ticketowym (zostaw tylko 4 ostatnie cyfry).

Płatność kartą to osobny temat, do sprawdzenia w logach bramki płatniczej."""),
    ],
    # 23 Italian forwarded email with signature
    [
        ("user", """mi traduci in inglese questa mail inoltrata?

---------- Messaggio inoltrato ----------
Da: {name} <{email}>
Oggetto: Torneo di calcetto aziendale

Ciao a tutti, il torneo si terrà sabato al centro sportivo in {street}, {city}. Le iscrizioni chiudono venerdì. Per info chiamatemi.

--
{name}
Responsabile Eventi
Tel. {phone}
{address}"""),
        ("assistant", """Here's the translation:

---------- Forwarded message ----------
From: {name} <{email}>
Subject: Company five-a-side football tournament

Hi everyone, the tournament will take place on Saturday at the sports centre on {street}, {city}. Registration closes on Friday. Call me for info.

--
{name}
Events Manager
Tel. {phone}
{address}"""),
    ],
    # 24 Markdown table tournament, Dutch/English mix
    [
        ("user", """kun je hier een nette markdown tabel van maken voor ons schaaktoernooi?
1. {name} - {phone} - {email}
2. {name2}, bellen via {first3}
3. {first3} zelf, mail volgt"""),
        ("assistant", """| # | Naam | Telefoon | E-mail | Opmerking |
|---|------|----------|--------|-----------|
| 1 | {name} | {phone} | {email} | |
| 2 | {name2} | – | – | contact via {first3} |
| 3 | {first3} | – | – | e-mail volgt |

Zal ik {first2}'s en {first3}'s gegevens later aanvullen als je ze hebt?"""),
        ("user", "ja, en zet {surname} bovenaan als organisator"),
        ("assistant", """| # | Naam | Rol | Telefoon | E-mail |
|---|------|-----|----------|--------|
| 1 | {name} | organisator | {phone} | {email} |
| 2 | {name2} | speler | – | – |
| 3 | {first3} | speler | – | – |"""),
    ],
]


HELD_OUT_21_TEMPLATES: list[list[tuple[str, str]]] = [
    # 1 small claims court letter (en)
    [
        ("user", """hi, i need help writing a letter to the small claims court. my old landlord {name2} has kept my whole deposit (£1,150) for the flat above his shop and wont answer my emails since march. i moved out 3 months ago and left it spotless, i have photos. can you draft something formal?

my details: {name}, now living at {address}, phone {phone}, email {email}"""),
        ("assistant", """Of course. Here's a draft you can adapt. Check whether your court also wants its own claim form (in England and Wales that's form N1 or Money Claim Online), since a letter alone usually isn't enough to start a claim.

---

{name}
{address_lines}
Tel: {phone}
Email: {email}

[Date]

To the Court Manager,

**Re: Return of tenancy deposit, {name} v {name2}**

I am writing in connection with my claim against my former landlord, {name2}, for the return of my tenancy deposit of £1,150.

I vacated the property three months ago and returned it in good condition, as shown by the dated photographs enclosed. Since March I have written to {name2} on several occasions requesting the return of the deposit but have received no reply.

I would be grateful if you could advise me on the next steps.

Yours faithfully,

{name}

---

Would you like me to add a short timeline of the emails you sent?"""),
        ("user", "yes pls, first one was 2 march, then 19 march and 10 april. sign it off just with my name, no 'yours faithfully' thats so stiff lol"),
        ("assistant", """Sure, here's the timeline section plus a softer sign-off:

**Timeline**
- 2 March: first email to {name2} requesting the deposit
- 19 March: follow-up email, no response
- 10 April: final request, no response

Kind regards,
{name}
{phone} | {email}"""),
    ],
    # 2 German tax return
    [
        ("user", "Hallo! Ich mache zum ersten Mal meine Steuererklärung über ELSTER und bin ziemlich verloren. Kurz zu mir: {name}, wohnhaft {street}, {post} {city}. Meine Frau heißt {name2}, wir wollen zusammen veranlagt werden. Wo trage ich die Nummer ein? Meine {id_kind} ist {id}, ihre hab ich grad nicht da."),
        ("assistant", """Gerne! Bei der Zusammenveranlagung füllen Sie einen gemeinsamen Hauptvordruck aus:

1. **Person A (Sie):** {name}, Anschrift {street}, {post} {city}, Identifikationsnummer {id}.
2. **Person B (Ehefrau):** {name2}. Ihre Nummer steht auf ihrem letzten Steuerbescheid oder der Lohnsteuerbescheinigung, die brauchen Sie unbedingt, sonst kann ELSTER nicht absenden.
3. Bei „Veranlagungsart" wählen Sie „Zusammenveranlagung".

Möchten Sie auch eine Erstattung aufs Konto? Dann brauche ich noch die Bankverbindung."""),
        ("user", "ok danke. erstattung soll auf das gemeinsame konto, {iban}. kontoinhaber sind wir beide, reicht da mein name?"),
        ("assistant", """Ja, das reicht. Tragen Sie im Abschnitt „Bankverbindung" ein:

- IBAN: {iban}
- Kontoinhaber: „Ehegatten / Lebenspartner lt. Zeile 7 und 8" ankreuzen

Dann wird die Erstattung für Sie und {first2} gemeinsam auf {iban} überwiesen."""),
    ],
    # 3 car-sharing damage dispute (en), forwarded mail
    [
        ("user", """can you help me reply to this? they charged me for damage i didnt do

---------- Forwarded message ---------
From: ZipRide Claims <claims@zipride-mail.com>
Date: Tue, 4 Jun 2024 at 09:12
Subject: Damage claim #88213
To: {email}

Dear {name},

Following your trip on 28 May (pick-up: {street}, {city}), our inspection found a scratch on the rear bumper. In accordance with section 9 of our terms, a damage fee of EUR 450.00 has been charged to your payment method on file.

Kind regards,
ZipRide Claims Team

---

the card theyve charged is {card}, can i just do a chargeback? i took photos at drop off. i even changed my zipride login to {password} in case someone else used my account"""),
        ("assistant", """You can, but it's usually better to dispute with ZipRide in writing first: banks often ask whether you tried to resolve it with the merchant. Here's a reply:

---

Subject: Re: Damage claim #88213 - dispute

Dear ZipRide Claims Team,

I dispute damage claim #88213. I returned the vehicle after my trip on 28 May without any damage, and I have timestamped photographs of the rear bumper taken at drop-off, which I attach.

Please reverse the charge of EUR 450.00 made to my card {card} within 14 days. If the charge is not reversed, I will raise a chargeback with my card issuer.

Regards,
{name}

---

Also, on the account: changing the login was sensible, but since you've now written the new one ({password}) here, I'd change it again to something you haven't shared anywhere."""),
        ("user", "ok sent it. add my number in case they want to call, its {phone}"),
        ("assistant", "Good idea. Add this line above \"Regards\": \"You can reach me on {phone} if you need further details.\""),
    ],
    # 4 Polish genealogy, GEDCOM
    [
        ("user", """Cześć, robię drzewo genealogiczne rodziny w Gramps i chcę zaimportować plik GEDCOM, ale wyskakuje błąd przy drugiej osobie. Możesz sprawdzić?

0 HEAD
1 CHAR UTF-8
0 @I1@ INDI
1 NAME {first} /{surname}/
1 SEX M
1 BIRT
2 DATE 12 MAR 1921
2 PLAC {city}, {country}
1 FAMS @F1@
0 @I2@ INDI
1 NAME {first3} /{surname}
1 SEX F
1 FAMS @F1@
0 @F1@ FAM
1 HUSB @I1@
1 WIFE @I2@
0 TRLR"""),
        ("assistant", """Błąd jest w linii osoby @I2@:

`1 NAME {first3} /{surname}`

Nazwisko w GEDCOM musi być otoczone ukośnikami z obu stron, brakuje zamykającego `/`. Poprawnie:

```
0 @I2@ INDI
1 NAME {first3} /{surname}/
1 SEX F
1 FAMS @F1@
```

Po tej zmianie {first3} {surname} powinna zaimportować się jako żona {first}a w rodzinie @F1@."""),
        ("user", "super, dzięki! babcia {name2} mówiła jeszcze, że pradziadek {first} mieszkał potem przy {street} w {city}, mniej więcej od 1950. gdzie to wpisać?"),
        ("assistant", """Do tego służy znacznik RESI (miejsce zamieszkania). Dopisz pod osobą @I1@:

```
1 RESI
2 DATE FROM 1950
2 ADDR {street}
3 CITY {city}
3 CTRY {country}
2 NOTE Wg relacji: {name2}
```

Dobrze też zaznaczyć źródło (tu: relacja babci {first2}), bo przy genealogii to potem bardzo pomaga."""),
    ],
    # 5 Portuguese (BR) wedding guest list CSV
    [
        ("user", """oi! to organizando os convites do casamento e exportei a lista de convidados do google forms. dá pra transformar isso numa tabela bonitinha separando quem confirmou?

Carimbo de data/hora,Nome completo,E-mail,Telefone,Vai comparecer?,Acompanhante
12/03/2024 21:14:02,{name},{email},{phone},Sim,{first3}
13/03/2024 08:40:55,{name2},,,Talvez,
15/03/2024 19:02:31,tia rosa,,,Sim,"""),
        ("assistant", """Claro! Aqui está:

**Confirmados**

| Nome | E-mail | Telefone | Acompanhante |
|---|---|---|---|
| {name} | {email} | {phone} | {first3} |
| Tia Rosa | – | – | – |

**Pendentes**

| Nome | Resposta | Observação |
|---|---|---|
| {name2} | Talvez | sem e-mail nem telefone, vale mandar mensagem pra {first2} direto |

Total confirmado até agora: 3 pessoas ({first}, {first3} e Tia Rosa)."""),
        ("user", "perfeito!! o endereço pra entregar o convite impresso do {first} é {address}, mas acho que o CEP {post} tá errado, ele mudou ano passado"),
        ("assistant", "Anotei: {name}, {address}. Sobre o CEP {post}: confira no site dos Correios (Busca CEP) pelo nome da rua, {street}, em {city}. Se ele mudou de endereço, o mais seguro é perguntar direto pro {first} antes de imprimir o envelope."),
    ],
    # 6 Danish funeral
    [
        ("user", "Min far, {name}, døde i søndags efter lang tids sygdom. Jeg skal skrive en dødsannonce til lokalavisen og en besked til familien. Bisættelsen er i {city} Kirke fredag kl. 13. Han blev 81. Kan du hjælpe? Vi vil hellere have et bidrag til Kræftens Bekæmpelse end blomster."),
        ("assistant", """Jeg er virkelig ked af dit tab. Her er et forslag til annoncen:

---

Vores kære far, svigerfar og morfar

**{name}**

er stille sovet ind, 81 år.

Bisættelsen finder sted fredag kl. 13 fra {city} Kirke.

I stedet for blomster modtages gerne et bidrag til Kræftens Bekæmpelse.

På familiens vegne

---

Skal der stå navne under "På familiens vegne"?"""),
        ("user", "ja, skriv min søster {name2} og mig. og hun spørger om vi kan skrive kontonummeret til mindeindsamlingen i beskeden til familien: {iban}. og at man kan ringe til mig på {phone} hvis man vil hjælpe med kaffen bagefter"),
        ("assistant", """Selvfølgelig. Forslag til beskeden til familien:

---

Kære alle

Far, {first}, sov stille ind søndag. Bisættelsen er fredag kl. 13 i {city} Kirke, og bagefter er der kaffe i sognegården.

Vil I give et bidrag til mindeindsamlingen, kan det overføres til {iban}, mærket "Mindeindsamling {surname}".

Har I lyst til at hjælpe med kaffen, så ring til mig på {phone}.

Kærlig hilsen
[dit navn] og {first2}

---

Og i annoncen: "På familiens vegne, {name2} og [dit navn]"."""),
    ],
    # 7 volunteer roster (en)
    [
        ("user", """can you turn this into a rota for the food bank saturdays in july? each shift needs 2 people, mornings 9-12 and afternoons 12-3. {first3} can only do mornings

{name} ({phone})
{name2} - {email}
{first3} (no surname on the sheet, she's {first}'s neighbour)
marta k. - ask at church"""),
        ("assistant", """Here's a first go. I've rotated people so nobody does two shifts on the same day and {first3} is always on mornings:

| Date | Morning 9-12 | Afternoon 12-3 |
|---|---|---|
| Sat 6 Jul | {first3}, {name} | {name2}, Marta K. |
| Sat 13 Jul | {first3}, {name2} | {name}, Marta K. |
| Sat 20 Jul | {first3}, Marta K. | {name}, {name2} |
| Sat 27 Jul | {first3}, {name} | {name2}, Marta K. |

**Contacts**
- {name}: {phone}
- {name2}: {email}
- {first3}: via {first}
- Marta K.: via church

{first3} ends up on every Saturday, so you might want to check she's OK with that."""),
        ("user", "lol yeah shes retired, she'll be fine. write the whatsapp msg to send round? sign it from me, {first}"),
        ("assistant", """Hi all! 👋 Here's the food bank rota for July (table attached). {first3}, you're on mornings every week as you asked. {first2}, I've only got your email ({email}), could you send me your number so I can add you to the group? If you can't make a shift, please swap with someone and let me know.

Thanks so much!
{first}"""),
    ],
    # 8 Czech bookkeeping export
    [
        ("user", """Ahoj, potřebuju z exportu z Pohody udělat přehled nezaplacených faktur za Q1. Tady je CSV:

cislo;datum;odberatel;ICO;castka;splatnost;uhrazeno
2024001;05.01.2024;{name};{id};12 400,00;19.01.2024;ano
2024007;22.01.2024;{name2};;3 150,00;05.02.2024;ne
2024012;14.02.2024;{name};{id};8 900,00;28.02.2024;ne

A pak mi napiš upomínku. Naše číslo účtu je {iban}, kontakt {email} nebo {phone}."""),
        ("assistant", """Nezaplacené faktury za Q1:

| Číslo | Odběratel | IČO | Částka (Kč) | Splatnost |
|---|---|---|---|---|
| 2024007 | {name2} | – | 3 150,00 | 05.02.2024 |
| 2024012 | {name} | {id} | 8 900,00 | 28.02.2024 |

Celkem po splatnosti: **12 050,00 Kč**.

Upomínka (pro {name}):

---

Věc: Upomínka – faktura č. 2024012

Vážený pane / Vážená paní {surname},

dovolujeme si Vás upozornit, že faktura č. 2024012 na částku 8 900,00 Kč se splatností 28.02.2024 dosud nebyla uhrazena. Prosíme o úhradu do 7 dnů na účet {iban}, jako variabilní symbol uveďte 2024012.

Pokud jste již platbu odeslali, považujte prosím tuto upomínku za bezpředmětnou. V případě dotazů nás kontaktujte na {email} nebo {phone}.

S pozdravem

---

Mám udělat stejnou i pro {name2}?"""),
        ("user", "jo, ale tam neznám IČO, je to fyzická osoba"),
        ("assistant", "To nevadí, u fyzické osoby IČO uvádět nemusíte. Stačí oslovení „Vážený pane / Vážená paní\", jméno {name2}, číslo faktury 2024007, částka 3 150,00 Kč, a stejně jako předtím účet {iban} a kontakt {email}."),
    ],
    # 9 dev: psycopg2 stack trace with DSN
    [
        ("system", "You are a helpful coding assistant."),
        ("user", """my flask app suddenly cant connect to postgres after i rotated creds, heres the trace

```
Traceback (most recent call last):
  File "/srv/app/db.py", line 14, in get_conn
    return psycopg2.connect(DSN)
  File "/usr/lib/python3/dist-packages/psycopg2/__init__.py", line 122, in connect
    conn = _connect(dsn, connection_factory=connection_factory, **kwasync)
psycopg2.OperationalError: connection to server at "db.internal" (10.0.3.7), port 5432 failed: FATAL:  password authentication failed for user "{first_lower}"
```

db.py:
```python
DSN = "postgresql://{first_lower}:{password}@db.internal:5432/shop"
```

the new one is definitely {password}, i copied it straight from 1password"""),
        ("assistant", """If the password itself is right, the usual culprit is special characters. In a URL-style DSN, characters like `@`, `#`, `/`, `:` or `%` have to be percent-encoded, otherwise libpq reads part of the password as host or path.

Safer: build the DSN from parts, or encode it:

```python
import os
from urllib.parse import quote_plus

PW = os.environ["PGPASSWORD_SHOP"]
DSN = f"postgresql://{first_lower}:{{quote_plus(PW)}}@db.internal:5432/shop"
```

Or skip the URL entirely:

```python
psycopg2.connect(host="db.internal", port=5432, dbname="shop", user="{first_lower}", password=PW)
```

Also, since the password is now in this chat and hard-coded in `db.py`, move it into an environment variable and consider rotating it once more."""),
        ("user", """ahh it has a # in it yeah. the worker uses ~/.pgpass tho and that fails too:

db.internal:5432:shop:{first_lower}:{password}"""),
        ("assistant", """In `.pgpass` there's no URL parsing, so `#` is fine there. Two other things break it though:

1. `:` and `\\` inside the password must be escaped as `\\:` and `\\\\`.
2. The file must be `chmod 600`, otherwise libpq silently ignores it:

```bash
chmod 600 ~/.pgpass
psql "host=db.internal dbname=shop user={first_lower}" -c 'select 1'
```

If `psql` works, the worker will too."""),
    ],
    # 10 dev: .env + compose
    [
        ("user", """why does docker compose not pick up my env vars?? here's my .env

```
APP_ENV=production
ADMIN_EMAIL={email}
SMTP_HOST=smtp.mailgun.org
SMTP_USER=postmaster@mg.example-shop.eu
SMTP_PASS={password}
STRIPE_TEST_CARD={card}
SUPPORT_PHONE="{phone}"
DEFAULT_SHIP_FROM="{address}"
```

and the compose file

```yaml
services:
  web:
    build: .
    env_file: .env.prod
    environment:
      - ADMIN_EMAIL
```"""),
        ("assistant", """Your compose file loads `env_file: .env.prod`, but the file you pasted is `.env`. Compose only reads `.env` automatically for *variable substitution in the compose file itself*, not as container environment. Fix:

```yaml
services:
  web:
    build: .
    env_file: .env
```

You can drop the `environment: - ADMIN_EMAIL` line; it only passes through a variable from your shell, which is probably empty.

Check with:

```bash
docker compose config | grep -A12 environment
```

You should see `ADMIN_EMAIL: {email}` and `SUPPORT_PHONE: {phone}`.

Also: `SMTP_PASS` looks like a real credential. Add `.env` to `.gitignore`, and if it's already been pushed, rotate it."""),
        ("user", "it works now thx. the ship from address shows with the quotes tho: \"{address}\""),
        ("assistant", """That happens with older Compose versions, which passed values literally. Either upgrade to Compose v2 or drop the quotes:

```
DEFAULT_SHIP_FROM={address}
```"""),
    ],
    # 11 dev: SQL dump anonymisation
    [
        ("user", """i need to anonymise our customer table before sending a dump to the contractor. can you write an UPDATE that scrambles it? sample rows:

```sql
INSERT INTO public.customers (id, full_name, email, phone, street, postcode, city, country, created_at) VALUES
(1041, '{name}', '{email}', '{phone}', '{street}', '{post}', '{city}', '{country}', '2023-11-02 09:14:55+01'),
(1042, '{name2}', NULL, NULL, '{street}', '{post}', '{city}', '{country}', '2023-11-02 10:01:12+01');
```

postgres 15"""),
        ("assistant", """Run this on a **copy** of the database, never on prod:

```sql
BEGIN;

UPDATE public.customers
SET full_name = 'Customer ' || id,
    email     = CASE WHEN email IS NULL THEN NULL
                     ELSE 'customer' || id || '@example.invalid' END,
    phone     = CASE WHEN phone IS NULL THEN NULL
                     ELSE '+000' || lpad(id::text, 8, '0') END,
    street    = 'Street ' || (id % 97),
    postcode  = '00000';

COMMIT;
```

So row 1041 (`'{name}'`, `{email}`, `{phone}`) becomes `'Customer 1041'`, `customer1041@example.invalid`, `+00000001041`. I left `city` and `country` as they are ({city}, {country}) since contractors often need them for testing; blank them too if that's not OK.

Then dump with `pg_dump --data-only -t public.customers`."""),
        ("user", "would the contractor be able to re-identify {first2}? shes the only customer in that town i think"),
        ("assistant", "Possibly, yes. If {name2} is the only customer in {city}, city plus `created_at` could be enough to single her out. Setting `city = 'City ' || (id % 20)` and rounding `created_at` to the month with `date_trunc('month', created_at)` would close that gap."),
    ],
    # 12 Hungarian parking fine objection
    [
        ("user", "Szia! Kaptam egy parkolási pótdíjat, pedig volt érvényes bérletem. Segítenél megírni a kifogást a közterület-felügyeletnek? Adataim: {name}, lakcím: {address}, telefon: {phone}. A rendszám ABC-123, a bérlet a feleségem, {name2} nevén van, de ugyanarra az autóra."),
        ("assistant", """Természetesen. Íme egy tervezet:

---

**Tárgy:** Kifogás parkolási pótdíj ellen – ABC-123

Tisztelt Közterület-felügyelet!

Alulírott {name} (lakcím: {address}; tel.: {phone}) kifogással élek az ABC-123 forgalmi rendszámú gépjárműre kiszabott parkolási pótdíj ellen.

A gépjármű a pótdíj kiszabásának időpontjában érvényes lakossági parkolási bérlettel rendelkezett, amely {name2} nevére szól, és kifejezetten erre a gépjárműre került kiállításra. A bérlet másolatát mellékelem.

Kérem a pótdíj törlését.

Tisztelettel:
{name}

---"""),
        ("user", "köszi! azt kérik hogy legyen benne valami azonosító is, nálam a {id_kind} van kéznél: {id}, és az email címem: {email}. meg a feleségem aláírása kell?"),
        ("assistant", """Az első bekezdés így módosul:

„Alulírott {name} ({id_kind}: {id}; lakcím: {address}; e-mail: {email}; tel.: {phone}) kifogással élek…"

A feleséged aláírása általában nem kötelező, de ha a bérlet {first2} nevén van, érdemes egy rövid nyilatkozatot is csatolni tőle, hogy ő is kéri a törlést."""),
    ],
    # 13 French deposit dispute letter
    [
        ("user", "bonjour, mon ancien propriétaire, {name2}, refuse de me rendre le dépôt de garantie (900 €) depuis deux mois alors que l'état des lieux de sortie était nickel. je veux lui envoyer une lettre recommandée avec mise en demeure. moi c'est {name}, j'habite maintenant {address}. mon RIB pour le virement : {iban}"),
        ("assistant", """Voici un modèle de mise en demeure :

---

{name}
{address_lines}

{name2}
[adresse du propriétaire]

**Lettre recommandée avec accusé de réception**

Objet : Mise en demeure – restitution du dépôt de garantie

Madame, Monsieur,

J'ai quitté le logement que vous me louiez il y a deux mois. L'état des lieux de sortie ne mentionne aucune dégradation.

Conformément à l'article 22 de la loi n° 89-462 du 6 juillet 1989, le dépôt de garantie doit être restitué dans un délai d'un mois lorsque l'état des lieux de sortie est conforme à l'état des lieux d'entrée. Passé ce délai, la somme due est majorée de 10 % du loyer mensuel par mois de retard.

Je vous mets donc en demeure de me verser la somme de 900 €, majorée des pénalités de retard, sous huit jours, par virement sur le compte suivant : {iban}.

À défaut, je saisirai la commission départementale de conciliation puis, si nécessaire, le tribunal judiciaire.

Veuillez agréer, Madame, Monsieur, l'expression de mes salutations distinguées.

{name}

---"""),
        ("user", "merci !! il habite dans le même immeuble que mon ancien appart, je mets quoi comme adresse ?"),
        ("assistant", "Mettez l'adresse de l'immeuble avec son numéro d'appartement ou l'étage, par exemple « {name2}, [n° et rue], 2e étage ». S'il a un autre domicile indiqué dans le bail, utilisez plutôt celui-là."),
    ],
    # 14 Spanish car-sharing fine appeal
    [
        ("user", "hola, me ha llegado una multa de Madrid por un coche de carsharing que yo no conducía. la empresa dice que identificaron como conductor a mí, {name}, con mi {id_kind} {id}, pero la reserva se hizo desde la cuenta de mi ex, {name2}, y ese día yo estaba en {city}!! además me cobraron 200 € de gestión a la tarjeta {card}. cómo lo recurro?"),
        ("assistant", """Tienes dos frentes distintos:

1. **La multa:** presenta alegaciones ante el Ayuntamiento de Madrid dentro de los 20 días naturales desde la notificación, indicando que no eras el conductor y aportando pruebas de que estabas en {city} (billetes, tickets, etc.).
2. **Los 200 € de gestión:** reclámalos a la empresa y, si no responden, pide a tu banco la retrocesión del cargo en la tarjeta {card}.

Modelo de alegaciones:

---

D./Dña. {name}, con {id_kind} {id}, ante el órgano competente comparece y EXPONE:

Primero. Que en la fecha de la infracción no conducía el vehículo, ya que me encontraba en {city}, como acredito con la documentación adjunta.

Segundo. Que la reserva del vehículo se realizó desde una cuenta de usuario que no es de mi titularidad.

SOLICITA que se anule la identificación como conductor y se archive el expediente.

---

¿Me dices tu domicilio para completar el encabezado?"""),
        ("user", "vivo en {address}. y para notificaciones mejor el email {email}"),
        ("assistant", "Perfecto, el encabezado queda así: \"D./Dña. {name}, con {id_kind} {id} y domicilio a efectos de notificaciones en {address} (correo electrónico: {email}), ante el órgano competente comparece y EXPONE:\""),
    ],
    # 15 Italian wedding envelopes, broken export
    [
        ("user", "ciao, ho esportato gli indirizzi per le partecipazioni del matrimonio dal foglio google ma sono usciti tutti così: {address_qq}. mi sistemi questo e mi scrivi la busta per {name}? e anche per {name2}, stesso indirizzo, sono marito e moglie"),
        ("assistant", """Certo! I "???" sono gli a capo persi durante l'esportazione. Ecco la busta:

---

Gentilissimi
{name} e {name2}
{address_lines}

---

Se il foglio ha molte righe così, in Google Sheets puoi usare in una colonna accanto:

`=SOSTITUISCI(A2; "???"; CODICE.CARATT(10))`

e poi attivare "A capo automatico" sulla colonna."""),
        ("user", "grazie!! nel biglietto per chi viene da fuori voglio scrivere di confermare via mail a {email} oppure chiamando mia sorella {first3} al {phone}"),
        ("assistant", "Ecco una frase per il biglietto: \"Vi preghiamo di confermare la vostra presenza entro il 30 aprile scrivendo a {email} oppure chiamando {first3} al numero {phone}.\" Se vuoi, posso preparare anche una versione più informale per amici come {first} e {first2}."),
    ],
    # 16 Dutch volunteer roster YAML
    [
        ("user", """Hoi! Ik beheer het vrijwilligersrooster van onze voetbalclub. We hebben een scriptje dat deze YAML leest en herinneringsmails stuurt, maar hij crasht. Kun je kijken?

```yaml
vrijwilligers:
  - naam: {name}
    email: {email}
    telefoon: {phone}
    taken: [kantine, scheidsrechter]
  - naam: {name2}
    email:
    telefoon: {phone}
    taken: kantine
```

Fout: TypeError: 'NoneType' object is not subscriptable"""),
        ("assistant", """Er zitten drie dingen in:

1. Bij {name2} is `email:` leeg, dus YAML maakt daar `None` van, vandaar de `TypeError`.
2. `taken: kantine` is een string, geen lijst, dus een loop gaat letter voor letter.
3. Telefoonnummers zonder aanhalingstekens kan YAML als getal lezen (voorloopnul weg). Zet ze altijd tussen quotes.

Verbeterde versie:

```yaml
vrijwilligers:
  - naam: "{name}"
    email: "{email}"
    telefoon: "{phone}"
    taken: [kantine, scheidsrechter]
  - naam: "{name2}"
    email: null
    telefoon: "{phone}"
    taken: [kantine]
```

En in het script:

```python
for v in data["vrijwilligers"]:
    if not v.get("email"):
        print(f"geen e-mail voor {{v['naam']}}, sla over")
        continue
    stuur_mail(v["email"], v["taken"])
```"""),
        ("user", "top, werkt! {first2} heeft trouwens hetzelfde nummer als {first} omdat ze samenwonen, is dat een probleem?"),
        ("assistant", "Voor het script niet: het gebruikt het telefoonnummer niet als sleutel. Alleen als je later sms-herinneringen stuurt, krijgt {phone} er twee. Dan kun je ze samenvoegen tot één bericht voor {first} en {first2}."),
    ],
    # 17 dev: card in JSON request log
    [
        ("user", """our security scanner flagged this line in the prod logs, where is this coming from? we use the stripe sdk so we should never see raw card numbers

```
2024-05-13T08:41:22.913Z INFO  checkout.controller request body: {{"customer":{{"name":"{name}","email":"{email}","phone":"{phone}"}},"billing":{{"line1":"{street}","postal_code":"{post}","city":"{city}"}},"card":{{"number":"{card}","exp":"08/27","cvc":"***"}}}}
```"""),
        ("assistant", """That body contains a raw card number (`{card}`), which means the card fields are being posted to **your** backend instead of being tokenised in the browser by Stripe Elements. Two fixes:

1. **Frontend:** mount Stripe's card element and send only the `payment_method` id to your server. The JSON should look like `{{"payment_method": "pm_..."}}`.
2. **Logging:** never log raw request bodies in `checkout.controller`. If you need them, redact first:

```js
const SENSITIVE = ['number', 'cvc', 'email', 'phone', 'line1'];
function redact(body) {{
  return JSON.parse(JSON.stringify(body, (k, v) => SENSITIVE.includes(k) ? '[REDACTED]' : v));
}}
logger.info({{ body: redact(req.body) }}, 'checkout request');
```

Also purge the existing log entries: besides the card, they contain {name}'s email ({email}), phone and billing address in {city}. Depending on your PCI scope, this may need to be reported."""),
        ("user", "ugh. how do i find all of them? logs are in cloudwatch"),
        ("assistant", """Use Logs Insights with a regex for card-like numbers, e.g.:

```
fields @timestamp, @logStream
| filter @message like /"number":"[0-9 ]{{12,23}}"/
| sort @timestamp desc
```

For the example above, searching for `{email}` will also show you every request from that customer."""),
    ],
    # 18 wifi key for mum (en), casual
    [
        ("user", "my mum ({name_lower}) cant get onto the wifi at her new place, {address_lower}. the isp guy set it up and wrote the key on a sticky note, its {password} but her tablet keeps saying wrong password. is it case sensitive? router is a tp-link archer"),
        ("assistant", """Yes, Wi-Fi keys are case-sensitive, and handwritten notes are a classic source of mix-ups. When she types `{password}`, check:

- `0` (zero) vs `O` (letter)
- `1`, `l` (lower-case L) and `I` (capital i)
- whether the tablet auto-capitalised the first letter

The key is also printed on the sticker under the router (labelled "Wireless Password/PIN"), but only if the installer didn't change it. If it still fails, you can log in at `tplinkwifi.net` from a device connected by cable and read or reset the key there."""),
        ("user", "no luck. the number on the bill is {phone}, extension two for tech support i think. worth ringing? account's under her name, {surname}"),
        ("assistant", "Yes, worth calling {phone}. Ask them to confirm the Wi-Fi key they set and, if needed, reset it remotely. They'll probably ask for the account holder, so have {first} there (or her permission) plus the address, {address}."),
    ],
    # 19 Czech tenancy complaint
    [
        ("user", "Dobrý den, bydlím v nájmu na adrese {address} a pronajímatel {name2} mi už třetí měsíc neopravil rozbitý kotel, takže nemáme teplou vodu. Potřebuju napsat formální výzvu k odstranění vady. Jmenuji se {name}, tel. {phone}."),
        ("assistant", """Dobrý den, tady je návrh:

---

{name}
{address_lines}
tel.: {phone}

{name2}
[adresa pronajímatele]

V {city} dne [datum]

**Věc: Výzva k odstranění vady pronajaté věci**

Vážený pane / Vážená paní,

jako nájemce bytu na adrese {address} Vás tímto vyzývám k odstranění vady spočívající v nefunkčním kotli, v jehož důsledku byt již tři měsíce nemá teplou vodu. Vadu jsem Vám oznámil/a bez zbytečného odkladu.

Podle § 2207 a násl. občanského zákoníku je pronajímatel povinen vadu odstranit v přiměřené době. Žádám Vás proto o zajištění opravy nejpozději do 14 dnů od doručení této výzvy.

S pozdravem

{name}

---"""),
        ("user", "díky moc!! ještě bych tam chtěl dát, že nájem platím vždycky včas na jeho účet {iban} a že když to do 14 dnů neopraví, nechám to opravit sám a odečtu si to z nájmu"),
        ("assistant", """Přidejte před „S pozdravem" tento odstavec:

„Nájemné hradím řádně a včas na Váš účet č. {iban}. Pokud vadu neodstraníte ve výše uvedené lhůtě, zajistím opravu sám/sama a požaduji náhradu účelně vynaložených nákladů, kterou si započtu proti nájemnému."

Doporučuji poslat dopis doporučeně a schovat si podací lístek."""),
    ],
    # 20 Polish joint tax return (PIT-37)
    [
        ("user", "hej, rozliczam PIT-37 razem z żoną pierwszy raz przez Twój e-PIT. ona się nazywa {name2}, ja {name}. w formularzu pyta o identyfikator, mój {id_kind} to {id}. i gdzie wpisać numer konta do zwrotu? to {iban}"),
        ("assistant", """W Twoim e-PIT po zalogowaniu wybierz „Rozlicz się z małżonkiem". Potem:

1. **Dane podatnika:** {name}, identyfikator {id}. Zwykle jest już wypełnione z Twojego profilu.
2. **Dane małżonka:** {name2}. Tu trzeba wpisać jej PESEL oraz jedną z kwot z zeszłorocznego zeznania (albo z PIT-11), żeby system ją zweryfikował.
3. **Rachunek do zwrotu:** w sekcji „Zwrot podatku" podaj numer {iban}. Uwaga: to musi być rachunek, którego jesteś (współ)właścicielem.

Możesz też od razu przekazać 1,5% podatku wybranej organizacji."""),
        ("user", "ok a adres? mieszkamy na {street}, {post} {city}, ale zameldowany jestem jeszcze u rodziców"),
        ("assistant", "Meldunek nie ma znaczenia: w PIT podajesz adres zamieszkania na 31 grudnia, czyli {street}, {post} {city}. Jeśli {first2} mieszka pod tym samym adresem, u niej wpisujesz to samo. Warto też zaktualizować adres w urzędzie skarbowym (ZAP-3), jeśli jest tam stary."),
    ],
    # 21 Portuguese reply to accountant, email signature
    [
        ("user", """me ajuda a responder esse email do meu contador? não entendi direito o que ele quer

-----Mensagem original-----
De: {name2} <{email}>
Enviada em: segunda-feira, 8 de abril de 2024 10:47
Para: {name_lower}
Assunto: IRPF 2024 - pendências

Olá {first},

para fechar sua declaração preciso do informe de rendimentos do banco, dos recibos do dentista e que você confirme seu endereço atual. No cadastro consta {address}.

Att,
{name2}
Contador | CRC 1SP234567/O-8
Tel.: {phone}
{email}

ah e coloca meu {id_kind} na resposta, ele sempre pede: {id}"""),
        ("assistant", """Ele está pedindo três coisas: (1) o informe de rendimentos do seu banco, (2) os recibos do dentista para dedução de despesas médicas e (3) a confirmação do endereço. Sugestão de resposta:

---

Olá, {first2},

segue em anexo o informe de rendimentos do banco e os recibos do dentista. Confirmo que meu endereço continua sendo {address}.

Meu {id_kind}, caso precise: {id}.

Qualquer dúvida, me avise.

Abraço,
{name}

---

Se o endereço tiver mudado, é só trocar a frase por: "Meu endereço atual é [novo endereço]"."""),
        ("user", "valeu! mando pro email dele mesmo né? {email}"),
        ("assistant", "Isso, responda para {email}. Se preferir confirmar por telefone que ele recebeu os anexos, o número na assinatura é {phone}."),
    ],
    # 22 Danish small-business VAT export
    [
        ("user", """Hej, jeg har en lille enkeltmandsvirksomhed og har eksporteret mine bilag fra e-conomic. Kan du lave en formel i Excel der summerer momsen pr. kvartal?

Dato;Bilag;Tekst;Kunde;Beløb;Moms
03-01-2024;101;Rengøring;{name};2.500,00;625,00
17-02-2024;102;Vinduespudsning;{name2};900,00;225,00
02-04-2024;103;Rengøring;{name};2.500,00;625,00"""),
        ("assistant", """Hvis datoen står i kolonne A og momsen i kolonne F, kan du bruge (dansk Excel):

`=SUMPRODUKT((AFRUND.LOFT(MÅNED(A2:A100)/3;0)=1)*F2:F100)`

Skift `=1` til 2, 3 eller 4 for de andre kvartaler. Med dine tre linjer giver det:

| Kvartal | Moms |
|---|---|
| Q1 | 850,00 kr. ({name} 625,00 + {name2} 225,00) |
| Q2 | 625,00 kr. ({name}) |

Husk at datoerne skal være rigtige datoer og ikke tekst. Ellers så brug "Tekst til kolonner" først."""),
        ("user", "tak! {name2} har ikke betalt bilag 102 endnu. skriv lige en kort venlig påmindelse, betaling til {iban}, og hun kan skrive til mig på {email} eller ringe {phone}"),
        ("assistant", """Kære {first2}

Jeg vil blot venligt minde om faktura nr. 102 for vinduespudsning på 1.125,00 kr. inkl. moms, som endnu ikke er betalt.

Beløbet kan overføres til {iban}. Skriv gerne fakturanummeret i tekstfeltet.

Har du spørgsmål, er du velkommen til at skrive til {email} eller ringe på {phone}.

Venlig hilsen"""),
    ],
    # 23 Hungarian wedding seating
    [
        ("user", """szia :) esküvőt szervezünk júniusra, itt a vendéglista egy része, segítenél ültetési rendet csinálni 3 asztalra (8 fős asztalok)?

1. {name} + párja
2. {name2} (vega!!)
3. {first3} mama, a nagymamám
4. {first}ék két gyereke
5. kati és laci

a vőfély {name2} lesz, a száma {phone}, a helyszín: {address}"""),
        ("assistant", """Szívesen! Egy javaslat:

**1. asztal (családi, a főasztal mellett)**
- {first3} mama
- {name} és párja
- {first}ék két gyereke

**2. asztal (barátok)**
- Kati és Laci
- {name2}, vegetáriánus menü!
- még 5 hely szabad

**3. asztal**
- még üres, ide jöhetnek a többiek a listáról

A gyerekeket érdemes a szüleik mellé tenni, {first3} mamát pedig közel a kijárathoz és távol a hangszóróktól.

**Infólap a vőfélynek:**
Helyszín: {address}
Vőfély: {name2}, {phone}"""),
        ("user", "tökéletes! a dekoros lány ({email}) is kéri a címet meg a vőfély számát, megírod neki röviden?"),
        ("assistant", """Szia!

Küldöm az esküvő adatait: a helyszín {address}. A vőfély {name2}, őt a {phone} számon éred el a nap folyamán.

Köszönöm!

(Címzett: {email})"""),
    ],
    # 24 HR onboarding, Slack-like export
    [
        ("system", "You are an assistant integrated into the Acme Slack workspace. Be concise."),
        ("user", """[10:02] {name}: hey can you turn this into an onboarding checklist? {name2} starts monday in ops
[10:03] {name}: payroll needs her bank details ({iban}) and a copy of her {id_kind}, number is {id}
[10:03] {name}: her company card ending... actually the full number is {card}, it arrives tuesday
[10:04] {name}: HR portal login is her work email {email} and the temp one i set is {password}, she has to change it on first login"""),
        ("assistant", """**Onboarding: {name2} (Ops), starts Monday**

- [ ] Payroll: bank details on file (IBAN {iban})
- [ ] HR: copy of {id_kind} ({id}) received and stored
- [ ] Company card {card}: hand over Tuesday, get signature
- [ ] HR portal: account {email} created, temporary credential set; confirm {first2} changes it at first login
- [ ] Laptop + Slack invite
- [ ] Intro meeting with {first} on Monday 9:30

Tip: don't paste the temporary password ({password}) in a channel. Send it to her by DM or tell her in person."""),
        ("user", "[10:06] {name}: oops yeah, deleting. add her phone too for the ops on-call list: {phone}"),
        ("assistant", "Added: \"- [ ] Ops on-call list: add {name2}, {phone}\". Also set a reminder for {first} to check in with {first2} at the end of week one."),
    ],
]


HELD_OUT_22_TEMPLATES: list[list[tuple[str, str]]] = [
    # 1. OCR'd customs declaration, lost line breaks
    [
        ("user", """I scanned my CN23 customs form and the OCR came out like this, can you tell me what fields are still empty?

CUSTOMS DECLARATION  CN 23   From :  Name {name}   Address {address_qq}   Tel . {phone}
E - mail  {email}   To :  Name  ___________   Contents : 2 x wool scarves , gift   Value : 40 EUR"""),
        ("assistant", """Here's what the OCR picked up:

- Sender name: {name}
- Sender address: {address_qq} (the "???" are just lost line breaks)
- Sender phone: {phone}
- Sender email: {email}
- Contents: 2 x wool scarves, gift, value 40 EUR

Still empty: the recipient's name and address, HS tariff numbers, net weight per item, country of origin of the goods, and the signature/date box at the bottom."""),
        ("user", "oh right the recipient is my aunt, she lives in {city}, {country}. do i need her phone too?"),
        ("assistant", "For most destinations a recipient phone number is strongly recommended, because couriers and customs text or call them about duties. Add her number in the \"To\" block under {city}, {country}; your own {phone} in the sender block can stay as it is."),
    ],
    # 2. Landlord quarrel, German email thread with quoted replies
    [
        ("user", """Kannst du mir helfen, auf diese Mail zu antworten? Ich will höflich bleiben aber bestimmt.

> Von: {name2}
> Betreff: Re: Nebenkostenabrechnung {street}
>
> Sehr geehrte/r {name},
> die Nachzahlung von 412,50 EUR ist bis zum 15. fällig. Bitte überweisen Sie auf mein Konto {iban}.
>
>> Am 02.03. schrieb {name}:
>> Hallo Herr/Frau {surname}... sorry, ich meine: Ich habe die Abrechnung erhalten, aber die Heizkosten sind doppelt so hoch wie letztes Jahr."""),
        ("assistant", """Gern, hier ein Entwurf:

Sehr geehrte/r {name2},

vielen Dank für Ihre Nachricht zur Nebenkostenabrechnung für die Wohnung in der {street}, {city}.

Bevor ich die Nachzahlung von 412,50 EUR auf das Konto {iban} überweise, bitte ich Sie um Einsicht in die Belege zu den Heizkosten, da diese gegenüber dem Vorjahr um etwa 100 % gestiegen sind. Nach § 259 BGB habe ich ein Recht auf Belegeinsicht.

Bis zur Klärung behalte ich mir vor, den strittigen Betrag zurückzuhalten.

Mit freundlichen Grüßen
{name}"""),
        ("user", "perfekt, aber schreib es bitte etwas weniger juristisch, {first2} ist eigentlich ganz nett"),
        ("assistant", "Klar! Eine lockerere Version: \"Hallo {first2}, danke für die Abrechnung. Die Heizkosten kommen mir ziemlich hoch vor, könnte ich mal die Belege sehen? Dann überweise ich den Rest gern auf {iban}. Viele Grüße, {first}\""),
    ],
    # 3. Developer failing pytest fixture
    [
        ("user", """my test keeps failing with KeyError 'card_number' and i cant see why

```python
@pytest.fixture
def customer():
    return {{
        "full_name": "{name}",
        "email": "{email}",
        "cardNumber": "{card}",
        "pw_hash": hash_pw("{password}"),
    }}

def test_checkout(customer):
    order = checkout(customer)
    assert order["card_number"][-4:] == customer["cardNumber"][-4:]
```"""),
        ("assistant", """The fixture uses the key `cardNumber` (camelCase) but `checkout()` almost certainly reads `customer["card_number"]`, so the KeyError comes from inside `checkout`, not from your assert. Either rename the key in the fixture:

```python
return {{
    "full_name": "{name}",
    "email": "{email}",
    "card_number": "{card}",
    "pw_hash": hash_pw("{password}"),
}}
```

or map it in `checkout`. Side note: even in fixtures, avoid a real-looking card like {card} and a real plaintext password like `{password}`; use test PANs such as 4242 4242 4242 4242 and a dummy string."""),
        ("user", "lol yeah thats my actual card, copied it from the staging db. replacing it now"),
    ],
    # 4. Gym membership cancellation, French
    [
        ("user", "salut, je dois résilier mon abonnement à la salle de sport, ils veulent une lettre recommandée. je m'appelle {name}, j'habite {address}, mon numéro d'adhérent c'est {id} et ils prélèvent sur {iban}. tu peux m'écrire la lettre ?"),
        ("assistant", """Bien sûr, voici une proposition :

{name}
{address}

Objet : Résiliation de mon abonnement – adhérent n° {id}

Madame, Monsieur,

Par la présente, je vous informe de ma décision de résilier mon abonnement, conformément aux conditions générales de vente. Je vous demande de cesser tout prélèvement sur le compte {iban} à compter de la date de fin de préavis.

Je vous remercie de bien vouloir m'adresser une confirmation écrite de cette résiliation.

Veuillez agréer, Madame, Monsieur, l'expression de mes salutations distinguées.

{name}"""),
        ("user", "merci!! et si ils continuent de prélever ?"),
        ("assistant", "Dans ce cas, vous pouvez contester le prélèvement SEPA auprès de votre banque (jusqu'à 13 mois pour un prélèvement non autorisé) en indiquant que le mandat lié au compte {iban} a été révoqué ; gardez l'accusé de réception de la lettre comme preuve."),
    ],
    # 5. Car insurance claim, Italian then English
    [
        ("user", """ciao, ho avuto un incidente ieri, niente di grave. devo compilare il CAI (constatazione amichevole). i dati dell'altro conducente sono:
{name2}
{address_lines}
tel {phone}
la mia patente: {id_kind} {id}
come scrivo la descrizione?"""),
        ("assistant", """Nella sezione 14 (osservazioni) puoi scrivere qualcosa come:

"Il veicolo B, condotto da {name2}, in uscita da un parcheggio non ha dato la precedenza al veicolo A che procedeva regolarmente sulla corsia di destra."

Poi nella colonna del veicolo B riporta i dati di {name2}:
{address_lines}
Telefono: {phone}

Nella tua colonna (veicolo A) inserisci il tuo {id_kind}: {id}. Ricordate di firmare entrambi e di segnare le crocette al punto 12."""),
        ("user", "thanks, sorry switching to english, my insurer is british. do they also need {first2}'s number or just the form?"),
        ("assistant", "Just the form is usually enough, but it helps to give them {first2}'s number ({phone}) directly in your claim notes so the handler can contact the other party's insurer faster."),
    ],
    # 6. Calendar invite pasted
    [
        ("user", """can you turn this into a short reminder message for the group chat?

BEGIN:VEVENT
SUMMARY:Parents' evening - Year 9
DTSTART:20240418T170000
ORGANIZER;CN={name}:mailto:{email}
ATTENDEE;CN={name2}:mailto:{email}
LOCATION:{street}, {city}
DESCRIPTION:Questions? Call {first} on {phone}. {first3} will bring the sign-up sheet.
END:VEVENT"""),
        ("assistant", "Reminder: Year 9 parents' evening is on Thursday 18 April at 17:00 at {street}, {city}. Organised by {name}; if you have questions, call {first} on {phone}. {first3} is bringing the sign-up sheet. See you there!"),
        ("user", "add that {first2} can't make it"),
        ("assistant", "Reminder: Year 9 parents' evening is on Thursday 18 April at 17:00 at {street}, {city}. Organised by {name} (questions: {phone}). {first3} is bringing the sign-up sheet; {first2} unfortunately can't make it this time."),
    ],
    # 7. University admin, Polish
    [
        ("user", "Cześć, muszę napisać maila do dziekanatu, że zmieniłem adres zamieszkania. Nazywam się {name}, numer albumu {id}, nowy adres: {street}, {post} {city}. Mail uczelniany {email}."),
        ("assistant", """Proszę bardzo:

Temat: Zmiana adresu zamieszkania – nr albumu {id}

Szanowni Państwo,

uprzejmie informuję o zmianie mojego adresu zamieszkania. Nowy adres to:
{street}
{post} {city}

Proszę o aktualizację danych w systemie USOS. W razie pytań proszę o kontakt pod adresem {email}.

Z poważaniem,
{name}
nr albumu: {id}"""),
        ("user", "dzieki, a moze po angielsku tez? mam promotora z zagranicy"),
        ("assistant", "Sure: \"Dear Sir or Madam, I would like to inform you that my residential address has changed to {street}, {post} {city}. Please update my record (student no. {id}). Kind regards, {name}\""),
    ],
    # 8. Crypto app support, lower-case casual
    [
        ("user", "hey so my binance-ish app locked me out after i changed phone. login is {email} and i definitely typed {password} like always. support wants me to verify with the phone {phone} but that sim is dead"),
        ("assistant", "First, please don't share that login and secret here or with anyone claiming to be support, and change it as soon as you're back in, since {password} has now been written down in a chat. For the dead SIM: ask the exchange for their \"lost 2FA / phone number reset\" flow. They usually ask for an ID selfie and the email on file ({email}), not the old number {phone}."),
        ("user", "ok. they also asked for my username, its {first_lower}{surname} or maybe {first_lower}.crypto, cant remember"),
        ("assistant", "Give them both variants, {first_lower}{surname} and {first_lower}.crypto; they can look it up from {email} anyway. Genuine support will never ask you to send the login secret or your seed phrase."),
    ],
    # 9. SQL seed data
    [
        ("user", """why does this seed script fail on postgres with "value too long for type character varying(20)"?

INSERT INTO customers (name, email, phone, street, city, postcode, iban) VALUES
('{name}', '{email}', '{phone}', '{street}', '{city}', '{post}', '{iban}'),
('{name2}', '{email}', NULL, NULL, '{city}', NULL, NULL);"""),
        ("assistant", """One of the columns declared as `varchar(20)` is getting a longer value. The likeliest culprits are `iban` ('{iban}' can be up to 34 characters) or `phone` ('{phone}' with spaces and a country code). Check with:

```sql
SELECT column_name, character_maximum_length
FROM information_schema.columns
WHERE table_name = 'customers';
```

Then widen it, e.g. `ALTER TABLE customers ALTER COLUMN iban TYPE varchar(34);`. Also note both rows use the same email '{email}', which will break if you have a UNIQUE constraint."""),
        ("user", "it was iban yes. also should {name2}'s row really have NULL postcode?"),
        ("assistant", "If the column is nullable that's fine for seed data, but for realism give {name2} a postcode in {city} too, otherwise any address-formatting code path for that row won't be exercised."),
    ],
    # 10. Banking app screenshot transcribed
    [
        ("user", """transcribed from a screenshot of my banking app, is this a scam?

Transfer request
Recipient:  {name2}
IBAN:  {iban}
Amount:  € 1 250,00
Reference:  "refund card {card} blocked - urgent"
[ Approve ]   [ Decline ]"""),
        ("assistant", "This looks very much like a scam. Your bank would never ask you to *send* money to a private person ({name2}) to \"refund\" a blocked card. The reference quoting your card number {card} is meant to make it look official. Tap Decline, don't transfer anything to {iban}, and call the number on the back of your card to report it."),
        ("user", "the card number is real tho, how would they know it"),
        ("assistant", "It may have leaked through a phishing site, a skimmed terminal or a data breach at a shop. Ask your bank to block the card ending in the last four digits of {card} and issue a new one, and report the attempted transfer to {iban} so they can flag that account."),
    ],
    # 11. Neighbour quarrel, Dutch
    [
        ("user", "Mijn buurman {name} van {street} parkeert steeds zijn busje voor mijn oprit. Ik heb al twee keer aangebeld. Kun je een briefje voor in zijn brievenbus schrijven? Niet te boos."),
        ("assistant", """Natuurlijk. Een voorstel:

Beste {first},

Ik wil je vriendelijk vragen je busje niet meer voor mijn oprit te parkeren. Ik kan er dan niet in of uit, en vanochtend kwam ik daardoor te laat op mijn werk.

Zullen we even samen kijken naar een oplossing? Je kunt me bellen of appen op {phone}.

Groetjes,
{first2} (je buren op nummer 14)"""),
        ("user", "goed! maar {name}'s vrouw is eigenlijk degene die rijdt, hoe zeg ik dat zonder ruzie"),
        ("assistant", "Je kunt het neutraal houden door het briefje aan beiden te richten: \"Beste {first} en buren van {street},\" en \"jullie busje\" te schrijven in plaats van \"je busje\". Dan voelt niemand zich persoonlijk aangesproken."),
    ],
    # 12. Shipping label YAML config
    [
        ("user", """Our label printer service reads this YAML and prints the sender block wrong, the address ends up on one line. Config:

```yaml
sender:
  name: {name}
  address: |
    {street}
    {post} {city}
    {country}
  phone: "{phone}"
  email: {email}
```"""),
        ("assistant", """The literal block (`|`) keeps line breaks, so YAML is fine; the problem is probably that your template joins `address` with spaces. But two things to fix in the YAML itself: quote the email and name in case they contain special characters, and keep the indentation consistent:

```yaml
sender:
  name: "{name}"
  address: |
    {street}
    {post} {city}
    {country}
  phone: "{phone}"
  email: "{email}"
```

Then in the renderer use `address.splitlines()` instead of `address.split()`."""),
        ("user", "splitlines fixed it, thx"),
    ],
    # 13. School admin, Spanish switching to English
    [
        ("user", "hola! necesito avisar al colegio que mi hija {first3} no va a ir mañana, está con fiebre. la tutora es {name}. mi número por si acaso {phone}"),
        ("assistant", """Claro, aquí tienes un mensaje corto:

Hola {first}, buenas tardes. Le escribo para informarle de que {first3} no podrá asistir mañana a clase porque tiene fiebre. Si necesita algo, puede llamarme al {phone}. Muchas gracias y un saludo."""),
        ("user", "actually the school uses English, she's in the international section. and send it to {email}"),
        ("assistant", """Here you go:

To: {email}
Subject: Absence tomorrow - {first3}

Dear {name},

I'm writing to let you know that {first3} will not be in school tomorrow as she has a fever. Please let me know if there is any work she should catch up on. I can be reached at {phone}.

Kind regards"""),
    ],
    # 14. Forwarded message, Czech
    [
        ("user", """Ahoj, přišel mi tenhle mail, je to podvod?

---------- Přeposlaná zpráva ---------
Od: Zákaznická podpora <{email}>
Komu: {name}
Předmět: Vaše karta byla pozastavena

Vážený/á {name},
Vaše platební karta {card} byla dočasně zablokována. Pro odblokování potvrďte své údaje na odkazu níže do 24 hodin."""),
        ("assistant", "Ano, vypadá to jako phishing. Banka vám nikdy nepošle celé číslo karty ({card}) v e-mailu a nebude tlačit termínem 24 hodin. Adresa odesílatele {email} také pravděpodobně nepatří vaší bance. Na odkaz neklikejte, mail smažte a pro jistotu zavolejte do banky."),
        ("user", "ale to číslo karty sedí... co mám dělat?"),
        ("assistant", "Pokud číslo {card} opravdu odpovídá, znamená to, že údaje unikly. Nechte kartu v bankovní aplikaci hned zablokovat a požádejte o novou; zkontrolujte také poslední transakce."),
    ],
    # 15. Password manager CSV export
    [
        ("user", """i exported my old password manager to csv and want to import into bitwarden but it complains about the header. first lines:

name,url,username,password,notes
Netflix,https://netflix.com,{email},{password},
Bank,https://bank.example,{name_lower},{password},card {card}
Gym,,{first_lower},{password}2,"""),
        ("assistant", """Bitwarden's CSV format expects these headers:

```
folder,favorite,type,name,notes,fields,reprompt,login_uri,login_username,login_password,login_totp
```

So your rows become e.g.:

```
,,login,Netflix,,,0,https://netflix.com,{email},{password},
,,login,Bank,card {card},,0,https://bank.example,{name_lower},{password},
```

Also: you're reusing the same secret for Netflix and the bank, and the gym one is just that plus a "2". After importing, I'd change them and delete the CSV, because the file holds your card {card} in plain text."""),
        ("user", "yeah i know i know. i'll shred the file"),
    ],
    # 16. Car repair invoice, Hungarian
    [
        ("user", "Szia! Kaptam egy számlát az autószerelőtől, de szerintem hibás. Ez van rajta: Vevő: {name}, {address}, adószám: {id}, tel: {phone}. Fékbetét csere 48 000 Ft, munkadíj 3 óra. Tudsz írni egy reklamációt?"),
        ("assistant", """Persze, íme egy javaslat:

Tisztelt Szerviz!

A mai napon kiállított számlával kapcsolatban szeretnék reklamációt tenni. A számlán szereplő adatok: vevő {name}, cím {address}, adószám {id}.

A fékbetétcsere munkadíjaként 3 óra szerepel, holott az autó kevesebb mint egy órát volt a műhelyben. Kérem a számla helyesbítését.

Elérhetőségem: {phone}

Üdvözlettel:
{name}"""),
        ("user", "köszi, és ha nem válaszolnak? {first} vagyok egyébként, tegezz nyugodtan :)"),
        ("assistant", "Rendben, {first}! Ha 8 napon belül nem reagálnak, fordulhatsz a területileg illetékes békéltető testülethez. Vidd magaddal a számlát és ezt a levelet, amiben szerepel a {phone} elérhetőséged is."),
    ],
    # 17. Slack-like export
    [
        ("user", """can you summarise this slack thread for people who missed it?

[09:12] {first}: morning! new office wifi is up, network "Office-5G", key is {password}
[09:13] {first2}: thanks! does it work for guests?
[09:15] {first3}: guests use the other one, ask {first} at reception
[09:20] {first}: if anything breaks call me {phone}, i'm in until 5
[09:21] {first2}: 👍"""),
        ("assistant", """Summary:
- The new office Wi-Fi "Office-5G" is live; {first} shared the key ({password}) in the thread.
- Guests should use the separate guest network; ask {first} at reception.
- For problems, call {first} on {phone} until 17:00.

Tip: you might want to delete the message with {password} from the channel and pin the key somewhere with restricted access instead."""),
        ("user", "good point, {first2} already screenshotted it though 🙃"),
    ],
    # 18. Brazilian Portuguese, bureaucracy
    [
        ("user", "oi, preciso preencher um formulário de mudança de endereço no banco e não entendi um campo. meus dados: {name}, {id_kind}: {id}, endereço novo {street}, {city}, CEP {post}. o campo diz 'comprovante de residência em nome do titular'"),
        ("assistant", "O banco quer um documento recente (conta de luz, água, internet ou contrato de aluguel) que mostre o nome {name} e o endereço {street}, {city}, CEP {post}. Se a conta estiver no nome de outra pessoa, geralmente aceitam uma declaração de residência assinada por ela junto com o comprovante."),
        ("user", "a conta de luz tá no nome da minha mãe. o email do gerente é {email}, pode escrever pra ele?"),
        ("assistant", """Claro:

Para: {email}
Assunto: Atualização de endereço – {name}

Olá, tudo bem?

Gostaria de atualizar meu endereço para {street}, {city}, CEP {post}. Como a conta de luz está em nome da minha mãe, posso enviar uma declaração de residência assinada por ela junto com a conta? Meu {id_kind} é {id}.

Obrigado(a),
{name}"""),
    ],
    # 19. Danish club membership
    [
        ("user", "Hej! Jeg er kasserer i vores roklub og skal sende en påmindelse om kontingent til {name}. Beløbet skal overføres til {iban}. Kan du skrive det på dansk?"),
        ("assistant", """Selvfølgelig:

Kære {first},

Dette er en venlig påmindelse om, at kontingentet for 2024 (850 kr.) endnu ikke er modtaget. Beløbet kan overføres til klubbens konto {iban}; husk at skrive dit navn i beskeden.

Har du spørgsmål, er du velkommen til at skrive til mig.

Mange hilsner
{name2}
Kasserer"""),
        ("user", "tilføj at de kan skrive til {email} og at vi flytter bådhuset til {address}"),
        ("assistant", "Tilføjet nederst: \"Spørgsmål kan sendes til {email}. Bemærk også, at bådhuset fra 1. maj flytter til {address}.\" Resten af brevet til {first} er uændret, inkl. kontoen {iban}."),
    ],
    # 20. Casual lower-case, complaint letter, dictated numbers
    [
        ("user", "ok so i need a complaint letter to the phone company, they charged me twice. im {name_lower}, {address_lower}. account phone number is {phone} (the one ending in the double seven, not my work one). they took it from my card {card} twice on the 3rd"),
        ("assistant", """Here's a draft:

{name}
{address}

Subject: Duplicate charge on account {phone}

Dear Customer Services,

On the 3rd of this month, my monthly bill for the line {phone} was charged twice to my card {card}. Please refund the duplicate payment within 14 days and confirm once this has been done.

I have attached a copy of my card statement showing both transactions.

Yours faithfully,
{name}"""),
        ("user", "can u not put the full card number in, just last 4"),
        ("assistant", "Good idea. Replace the card line with \"charged twice to my card ending in\" followed by the last four digits of {card}. Everything else, including the account number {phone}, stays the same."),
    ],
    # 21. Markdown table roster
    [
        ("user", """turn this list into a markdown table with columns name / role / email / phone

{name} - coach - {email} - {phone}
{name2} - assistant coach, email same as above lol, no phone
{first3} (only first name, new kid's parent) - volunteer - no email yet"""),
        ("assistant", """| Name | Role | Email | Phone |
|---|---|---|---|
| {name} | Coach | {email} | {phone} |
| {name2} | Assistant coach | {email} | – |
| {first3} | Volunteer | – | – |"""),
        ("user", "sort by surname and put {first2} first since she's the assistant"),
        ("assistant", """| Name | Role | Email | Phone |
|---|---|---|---|
| {name2} | Assistant coach | {email} | – |
| {name} | Coach | {email} | {phone} |
| {first3} | Volunteer | – | – |

(I left {first3} at the bottom since we don't have a surname yet.)"""),
    ],
    # 22. JSON API payload failing validation
    [
        ("user", """Stripe-like API gives me 422 "invalid billing_details" on this, what's wrong?

```json
{{
  "amount": 4999,
  "currency": "eur",
  "card": "{card}",
  "billing_details": {{
    "name": "{name}",
    "email": "{email}",
    "address": {{
      "postal_code": "{post}",
      "city": "{city}",
      "country": "{country}"
    }}
  }}
}}
```"""),
        ("assistant", """Two likely problems:

1. `country` must be a two-letter ISO code ("DE", "FR", ...), not "{country}".
2. `address.line1` is usually required; you only send postal code and city.

Also, never send the raw card number "{card}" from your backend; tokenise it client-side and send a payment method id. Fixed payload:

```json
{{
  "amount": 4999,
  "currency": "eur",
  "payment_method": "pm_xxx",
  "billing_details": {{
    "name": "{name}",
    "email": "{email}",
    "address": {{
      "line1": "...",
      "postal_code": "{post}",
      "city": "{city}",
      "country": "XX"
    }}
  }}
}}
```"""),
    ],
    # 23. System prompt + HR assistant, email signature
    [
        ("system", "You are an internal HR assistant. Be concise and friendly."),
        ("user", """New joiner starting Monday, please write a welcome email. Here's their signature from the contract email so you have the details:

--
{name}
Junior Data Analyst
{street} | {city}
M: {phone}
{email}"""),
        ("assistant", """Subject: Welcome to the team, {first}!

Hi {first},

We're really happy to have you joining us on Monday as Junior Data Analyst. Please come to reception at 9:00; {first2} from the analytics team will meet you and show you around.

Your laptop and badge will be ready on arrival. If anything comes up before then, we have {phone} and {email} on file for you.

See you Monday!
HR"""),
        ("user", "add that parking is free at {street}"),
        ("assistant", "Added after the first paragraph: \"Parking is free at {street}, so feel free to come by car.\" The rest of the email to {name} is unchanged."),
    ],
    # 24. German -> English, passport renewal and portal login
    [
        ("user", """Ich muss meinen Pass verlängern und das Online-Portal der Stadt {city} will folgende Daten. Kannst du prüfen, ob ich alles habe?

Name: {name}
Anschrift:
{address_lines}
Bisheriger {id_kind}: {id}
Login für das Portal habe ich mit {email} angelegt, Kennwort ist {password}"""),
        ("assistant", "Die Angaben sehen vollständig aus: Name ({name}), Anschrift, Ihr bisheriger {id_kind} ({id}) und der Portalzugang über {email}. Zusätzlich brauchen Sie meist ein biometrisches Passfoto und die Gebühr. Bitte teilen Sie Ihr Kennwort nirgends, auch nicht hier; ändern Sie es am besten nach der Antragstellung."),
        ("user", "sorry can we do english, my german isn't good enough for the next part. the portal says my old {id_kind} {id} is 'not found'"),
        ("assistant", "Sure. \"Not found\" usually means a typo or a different format: check whether {id} has a letter O vs digit 0 mix-up, and enter it without spaces. If it still fails, book an in-person appointment in {city} and bring the old document; they can look it up by your name, {name}, and date of birth."),
    ],
]


HELD_OUT_23_TEMPLATES: list[list[tuple[str, str]]] = [
    # 1. parent, school trip form (English)
    [
        ("user", "can you help me fill in this school trip consent form? it's for my daughter {first}. the fields are: child's name, parent/guardian, home address, emergency contact, email"),
        ("assistant", "Of course! Tell me the details for each field and I'll lay it out so you can copy it straight into the form."),
        ("user", "child is {name}, guardian is me, {name2}. we live at {street} in {city}, postcode {post}. emergency number {phone} (that's my mobile, works on whatsapp too). email {email}"),
        ("assistant", "Here's the completed form:\n\n**Child's name:** {name}\n**Parent/Guardian:** {name2}\n**Home address:** {address}\n**Emergency contact:** {phone}\n**Email:** {email}\n\nOne tip: many schools also ask for a second emergency contact, so it's worth having another number ready in case {first}'s teacher asks."),
        ("user", "perfect thx. my husband's number is the same as mine basically, we share, so leave it"),
    ],
    # 2. teenager, netflix sharing (English, lowercase, typos)
    [
        ("user", "ok so my mum pays for netflix and she wants me to stop sharing it w my friends lol. how do i log out everyone"),
        ("assistant", "You can do that from the account settings: go to Account > Security & Privacy > 'Sign out of all devices'. After that, changing the password is the best way to make sure nobody logs back in."),
        ("user", "ugh fine. the login is {email} and rn its {password} which literally everyone in my class knows bc {first2} posted it in the group chat. what should i change it to"),
        ("assistant", "Yeah, since '{password}' has been shared around, definitely change it. Pick something long that you haven't used anywhere else, e.g. three or four random words with a number in between. Don't reuse it for your email account ({email}) either, and maybe don't tell {first2} this time 😅"),
        ("user", "lmaooo ok. also do u think mum will notice if i just dont tell her"),
    ],
    # 3. retiree, lost card letter (English)
    [
        ("user", "Good morning. I am 78 and not very good with computers. I have lost my bank card at the market on Saturday. Could you write a letter to my bank please. My name is {name} and the card number was {card}, I have it written on the statement."),
        ("assistant", "Good morning! I'm sorry to hear about your card. Before the letter: please also phone your bank's emergency line today so they can block the card immediately, a letter takes a few days.\n\nCould you tell me your address and account details so I can put them in the letter?"),
        ("user", "I have already rung them, the young man said to confirm in writing. Address is\n{address_lines}\nMy account is {iban}"),
        ("assistant", "Very good. Here is your letter:\n\n{name}\n{address_lines}\n\nDear Sir or Madam,\n\nRe: Lost debit card, account {iban}\n\nFurther to my telephone call, I am writing to confirm that my bank card with the number {card} was lost on Saturday. Please make sure the card stays blocked and send a replacement card to the address above.\n\nYours faithfully,\n\n{name}\n\nYou can print this and sign it above your name."),
        ("user", "Thank you dear, that is lovely. Should I write the whole card number or is that not safe"),
        ("assistant", "That's a sensible question. Many banks only need the last four digits, so instead of the full {card} you could write only the last four digits. Since it's already blocked the risk is small, but giving less is always safer."),
    ],
    # 4. office manager, CSV to SQL (English)
    [
        ("user", "I have this csv of our staff phone list, can you turn it into INSERT statements for our little postgres db? table is staff(full_name, email, phone, employee_no)\n\nfull_name,email,phone,employee_no\n{name},{email},{phone},{id}\n{name2},{first_lower}.office@example.com,,\n"),
        ("assistant", "Sure, here you go:\n\n```sql\nINSERT INTO staff (full_name, email, phone, employee_no) VALUES\n  ('{name}', '{email}', '{phone}', '{id}'),\n  ('{name2}', '{first_lower}.office@example.com', NULL, NULL);\n```\n\nI used NULL for the empty phone and employee number on the second row. If {first2} gets a number later you can run:\n\n```sql\nUPDATE staff SET phone = '...' WHERE full_name = '{name2}';\n```"),
        ("user", "great. wait, the second email is wrong, it should be based on {first2}'s name not {first}'s. fix pls"),
        ("assistant", "Good catch, sorry about that. Just replace the address in the second row with whatever {first2}'s real mailbox is, e.g.\n\n```sql\nUPDATE staff SET email = 'new.address@example.com' WHERE full_name = '{name2}';\n```"),
    ],
    # 5. freelancer, invoice table (English)
    [
        ("user", "freelance designer here. need an invoice in markdown I can paste into notion. me: {name}, {address}, {email}. client: {name2}. 3 logo drafts at 250 each, 1 revision round 120. pay to {iban}, 14 days"),
        ("assistant", "# INVOICE\n\n**From:** {name}\n{address}\n{email}\n\n**Bill to:** {name2}\n\n| # | Description | Qty | Unit price | Total |\n|---|-------------|-----|-----------:|------:|\n| 1 | Logo draft | 3 | 250.00 | 750.00 |\n| 2 | Revision round | 1 | 120.00 | 120.00 |\n| | **Total due** | | | **870.00** |\n\n**Payment terms:** 14 days from the invoice date\n**Bank transfer to:** {iban} (account holder: {name})\n\nThank you for your business!"),
        ("user", "can you add an invoice number and put the iban in a separate payment section at the bottom, my accountant likes that"),
        ("assistant", "Sure, add this under the table:\n\n---\n**Invoice no.:** 2024-017\n\n### Payment details\n- Account holder: {name}\n- IBAN: {iban}\n- Reference: 2024-017 / {surname}\n\nUsing your surname in the reference makes it easier for {name2}'s bookkeeping to match the payment."),
    ],
    # 6. nurse, shift swap (English)
    [
        ("user", "Night shift nurse here, brain is fried. Help me write a short text to my colleague asking to swap Thursday night for her Sunday early. Her name is {first2}. If she can't, I'll ask {first3}."),
        ("assistant", "Here's a short, friendly one:\n\n\"Hi {first2}! Random ask: would you be up for swapping your Sunday early for my Thursday night? Totally fine if not, just let me know either way so I can sort it. Thanks!! x\""),
        ("user", "lovely. and she asked for my number for the roster app, its {phone}. can you add it at the end like 'my new number is'"),
        ("assistant", "\"Hi {first2}! Random ask: would you be up for swapping your Sunday early for my Thursday night? Totally fine if not, just let me know either way so I can sort it. Oh and my new number is {phone} for the roster app. Thanks!! x\"\n\nIf {first2} says no, I can rewrite it for {first3}."),
    ],
    # 7. shop owner, POS config yaml (English) with system turn
    [
        ("system", "You are a helpful assistant for small business owners."),
        ("user", "I run a little bakery and my nephew set up our till software. It broke after an update. Here's the config file, can you see what's wrong?\n\n```yaml\nshop:\n  owner: {name}\n  address: \"{address}\"\n  contact_email: {email}\npayments:\n  test_card: {card}\n  provider_login: {email}\n  provider_secret: {password}\n  currency EUR\n```"),
        ("assistant", "The problem is the last line: `currency EUR` is missing its colon, so the YAML parser fails. It should be:\n\n```yaml\n  currency: EUR\n```\n\nTwo other things, though:\n1. `provider_secret: {password}` is stored in plain text. Anyone who can open this file can log into your payment provider as {email}. It would be better to move it into an environment variable.\n2. `test_card: {card}`: if that is a real card and not a provider test number, please remove it from the file."),
        ("user", "oh dear, the card is my own Visa, he used it to test. I'll delete it. and the secret thing I'll ask him about on Sunday"),
    ],
    # 8. student abroad, deposit back (English, address_qq)
    [
        ("user", "hey, im on erasmus and my landlord still hasnt returned my deposit (600€) after 2 months. i copied his address from the contract pdf but it came out weird: {address_qq}. can u help write a firm but polite email? im {name}"),
        ("assistant", "Of course. That '???' is just where the line breaks got lost in the PDF export, so the address reads:\n\n{address_lines}\n\nHere's a draft:\n\nSubject: Return of security deposit\n\nDear Landlord,\n\nI moved out of the flat on the date agreed in our contract and returned all keys. Two months have now passed and I have not yet received my deposit of 600 €.\n\nPlease transfer the full amount to my account within 14 days:\n\nAccount holder: {name}\nIBAN: [your IBAN]\n\nKind regards,\n{name}"),
        ("user", "my iban is {iban}. also his name is {name2} can u address him by name"),
        ("assistant", "Updated:\n\nDear {name2},\n\nI moved out of the flat on the date agreed in our contract and returned all keys. Two months have now passed and I have not yet received my deposit of 600 €.\n\nPlease transfer the full amount to my account within 14 days:\n\nAccount holder: {name}\nIBAN: {iban}\n\nKind regards,\n{name}"),
    ],
    # 9. forwarded email with signature (English)
    [
        ("user", "---------- Forwarded message ---------\nFrom: {name2} <{email}>\nSubject: re: plumber\n\nHi, the guy I used last year was great, cheap and on time. Tell him I sent you.\n\n--\n{name2}\n{address_lines}\nMob. {phone}\n\n^ my neighbour sent me this. can you write a message to the plumber asking for a quote for a leaking kitchen tap? my name is {name}"),
        ("assistant", "Sure! Here's a short message you can send:\n\n\"Hello, my name is {name} and I was recommended to you by {name2}, who you did some work for last year. I have a leaking kitchen tap and would like a quote for repairing or replacing it. I'm available most weekday mornings. Thanks in advance!\"\n\nThe forwarded email doesn't include the plumber's contact though, only {first2}'s signature and number ({phone}). You may need to ask your neighbour for it."),
        ("user", "ha yes you're right, that's her number not his. I'll ask"),
    ],
    # 10. python dict with id, password (English)
    [
        ("user", "writing a tiny script to autofill the visa application portal for my mum, getting KeyError. code:\n\n```python\napplicant = {{\n    \"name\": \"{name_lower}\",\n    \"doc_type\": \"{id_kind}\",\n    \"doc_no\": \"{id}\",\n}}\nlogin = {{\"user\": \"{first_lower}\", \"pw\": \"{password}\"}}\nprint(applicant[\"Name\"].title())\n```"),
        ("assistant", "The KeyError comes from `applicant[\"Name\"]`: dictionary keys are case-sensitive and you defined `\"name\"` in lower case. Use:\n\n```python\nprint(applicant[\"name\"].title())\n```\n\nThat prints the name with capitals, i.e. `{name}` style. Also, you have your mum's portal login (`{password}`) and her {id_kind} `{id}` hard-coded in the script. If you ever push this to GitHub, that ends up public, so consider reading them from environment variables:\n\n```python\nimport os\nlogin = {{\"user\": os.environ[\"PORTAL_USER\"], \"pw\": os.environ[\"PORTAL_PW\"]}}\n```"),
        ("user", "it's only on my laptop but ok fair"),
    ],
    # 11. dictated card and phone around the slot (English)
    [
        ("user", "I'm on the phone with the hotel and they need my card, can you quickly format this so I can read it out, I typed it as I found it: card {card} exp oh-nine slash twenty-seven, and my phone for the booking plus-sign {phone}"),
        ("assistant", "Here it is in chunks, easy to read aloud:\n\n- Card number: {card}\n- Expiry: 09/27\n- Phone: {phone}\n\nRead the card number in groups of four and pause between them; the hotel will usually repeat it back to you. Don't give the three-digit code on the back unless they really need it for the reservation."),
        ("user", "done, they said the name must be exactly as on the card, its {name} but the booking says {first} only"),
        ("assistant", "Ask them to update the guest name on the booking to {name} so it matches the card exactly. Hotels can do that in seconds, and it avoids problems at check-in."),
    ],
    # 12. JSON for a club membership (English)
    [
        ("user", "we run a small running club and keep members in a json file. can you add a new member? {name2} joined today, lives at {address}, phone {phone}, email {email}. format is like the existing ones:\n\n[\n  {{\"name\": \"{name}\", \"city\": \"{city}\", \"phone\": \"\", \"email\": \"\"}}\n]"),
        ("assistant", "Here's the updated file:\n\n```json\n[\n  {{\"name\": \"{name}\", \"city\": \"{city}\", \"phone\": \"\", \"email\": \"\"}},\n  {{\"name\": \"{name2}\", \"city\": \"{city}\", \"street\": \"{street}\", \"postcode\": \"{post}\", \"phone\": \"{phone}\", \"email\": \"{email}\"}}\n]\n```\n\nI added `street` and `postcode` as extra fields for {first2}, since you gave the full address. If you'd rather keep the same shape for everyone, just drop those two keys."),
        ("user", "keep them. {first}'s address we still need to ask"),
    ],
    # 13. German, parent, Kita registration
    [
        ("user", "hallo, ich muss meinen sohn für die kita anmelden und das formular fragt nach so vielen sachen. kannst du mir einen text für das feld 'angaben der eltern' formulieren? ich bin {name}, mein mann heißt {name2}. wir wohnen {street}, {post} {city}. tel {phone}, mail {email}"),
        ("assistant", "Gerne! Ein Vorschlag für das Feld:\n\n**Angaben der Eltern**\nMutter: {name}\nVater: {name2}\nAnschrift: {address}\nTelefon: {phone}\nE-Mail: {email}\n\nBeide Eltern sind sorgeberechtigt und unter der oben genannten Nummer erreichbar."),
        ("user", "super danke. bei 'abholberechtigte personen' soll noch meine schwester rein, {first3}. und {first}s nummer ist die gleiche wie oben, also meine"),
        ("assistant", "Dann so:\n\n**Abholberechtigte Personen**\n1. {name} (Mutter), Tel. {phone}\n2. {name2} (Vater)\n3. {first3} (Tante), bitte Nachnamen und Telefonnummer ergänzen\n\nDie Kita wird für {first3} wahrscheinlich noch den vollständigen Namen und einen Ausweis bei der ersten Abholung sehen wollen."),
    ],
    # 14. French, retiree, pension fund letter
    [
        ("user", "Bonjour, je suis à la retraite depuis mars et ma caisse ne m'a toujours rien versé. Pouvez-vous m'aider à écrire un courrier ? Je m'appelle {name}, mon numéro de dossier ({id_kind}) est {id}. Mon adresse :\n{address_lines}"),
        ("assistant", "Bonjour, bien sûr. Voici un modèle de lettre :\n\n{name}\n{address_lines}\n\nObjet : Retard de versement de ma pension de retraite – {id_kind} {id}\n\nMadame, Monsieur,\n\nJe suis à la retraite depuis le 1er mars et, à ce jour, je n'ai reçu aucun versement de ma pension. Je vous remercie de bien vouloir examiner mon dossier dans les meilleurs délais et de m'indiquer la date du premier paiement.\n\nJe vous prie d'agréer, Madame, Monsieur, l'expression de mes salutations distinguées.\n\n{name}\n\nSouhaitez-vous ajouter vos coordonnées bancaires ?"),
        ("user", "oui, mettez mon RIB, IBAN {iban}. Et ma fille {first2} peut être contactée au {phone} si besoin, moi j'entends mal au téléphone"),
        ("assistant", "Voici les lignes à ajouter avant la formule de politesse :\n\n« Je vous rappelle que ma pension doit être versée sur le compte IBAN {iban}. Pour toute question, vous pouvez joindre ma fille, {first2}, au {phone}, car j'ai des difficultés d'audition. »"),
    ],
    # 15. Spanish, student abroad, empadronamiento
    [
        ("user", "hola! soy estudiante de intercambio y tengo que empadronarme en el ayuntamiento. me piden un escrito del propietario diciendo que vivo en su piso. el piso está en {street}, {post} {city}, y el dueño se llama {name2}. yo soy {name}, mi {id_kind} es {id}"),
        ("assistant", "¡Claro! Aquí tienes un modelo de autorización que puede firmar el propietario:\n\n---\nD./Dña. {name2}, propietario/a de la vivienda situada en {street}, {post} {city},\n\nAUTORIZA a {name}, con {id_kind} {id}, a empadronarse en dicha vivienda.\n\nEn {city}, a ___ de ________ de 20__.\n\nFirma: ______________\n---\n\nNormalmente también piden una copia del DNI del propietario."),
        ("user", "vale gracias!! y si el ayuntamiento me llama, pongo mi número de aquí o el de mi país? el de aquí es {phone}"),
        ("assistant", "Pon el de aquí, {phone}, porque es el que vas a usar mientras vivas en {city} y es más fácil que te localicen."),
    ],
    # 16. Italian, shop owner, fattura
    [
        ("user", "ciao, ho un negozio di ceramiche e devo mandare una fattura a un cliente che ha comprato un servizio da tè. Cliente: {name2}, indirizzo {address}. Io sono {name}, email {email}, IBAN {iban}. totale 340 euro iva inclusa. mi scrivi il testo della mail?"),
        ("assistant", "Certo! Ecco una proposta:\n\nOggetto: Fattura n. 58 – Servizio da tè\n\nGentile {name2},\n\nla ringrazio per il suo acquisto. In allegato trova la fattura n. 58 per un importo totale di 340,00 € (IVA inclusa).\n\nLa preghiamo di effettuare il pagamento tramite bonifico bancario:\nIntestatario: {name}\nIBAN: {iban}\nCausale: Fattura n. 58 – {surname}\n\nLa spedizione avverrà all'indirizzo {address} appena ricevuto il pagamento.\n\nCordiali saluti,\n{name}\n{email}"),
        ("user", "perfetto, ma la causale metti il cognome del cliente non il mio"),
        ("assistant", "Hai ragione, scusa. Sostituisci la riga con:\n\nCausale: Fattura n. 58 – {name2}\n\nTutto il resto resta uguale."),
    ],
    # 17. Polish, teenager, hacked account
    [
        ("user", "hej, ktoś mi się włamał na insta chyba. dostałam maila na {email} że ktoś zmienił hasło. co robić??"),
        ("assistant", "Spokojnie, da się to zwykle odzyskać. Kroki:\n1. W aplikacji wybierz „Nie pamiętasz hasła?” i wpisz adres {email}.\n2. Jeśli haker zmienił też maila, użyj linku „Zabezpiecz swoje konto” z wiadomości od Instagrama.\n3. Po odzyskaniu ustaw nowe hasło i włącz weryfikację dwuetapową."),
        ("user", "ok odzyskałam!! stare było {password} xd chyba za proste. a moja kumpela {first2} mówi że jej też ktoś wszedł, używałyśmy tego samego hasła bo mamy wspólne konto na spotify"),
        ("assistant", "Super, że się udało! Tak, „{password}” było zbyt łatwe do zgadnięcia, a skoro {first2} używała tego samego, to ona też powinna je od razu zmienić, również na Spotify. Najlepiej, żeby każda z was miała osobne hasło do każdego konta, np. zapisane w menedżerze haseł."),
        ("user", "dzięki, powiem jej. {first} jestem btw haha"),
    ],
    # 18. Dutch, office manager, new employee onboarding
    [
        ("user", "Hoi, ik ben officemanager bij een klein bureau. Maandag begint {name2} bij ons. Kun je een welkomstmail opstellen met de praktische info? Zijn mailadres wordt {email}, tijdelijk wachtwoord {password} (moet hij de eerste keer wijzigen). Salaris gaat naar {iban}, dat heeft hij al doorgegeven."),
        ("assistant", "Natuurlijk! Hier een voorstel:\n\nOnderwerp: Welkom bij het team!\n\nBeste {first2},\n\nWat leuk dat je maandag begint! Hierbij alvast wat praktische informatie:\n\n- Je zakelijke e-mailadres: {email}\n- Tijdelijk wachtwoord: {password} (je wordt gevraagd dit bij de eerste keer inloggen te wijzigen)\n- Je salaris wordt overgemaakt naar rekeningnummer {iban}. Klopt dit niet, laat het ons dan weten.\n\nWe verwachten je om 9:00 uur op kantoor. Tot maandag!\n\nMet vriendelijke groet,\n{name}\nOfficemanager"),
        ("user", "Liever het wachtwoord niet in dezelfde mail, toch? Dan stuur ik dat per sms naar {phone}."),
        ("assistant", "Goed idee, dat is veiliger. Haal dan de regel met het tijdelijke wachtwoord uit de mail en stuur {first2} een los sms'je naar {phone}, bijvoorbeeld: „Hoi {first2}, je tijdelijke wachtwoord voor je account is {password}. Tot maandag!”"),
    ],
    # 19. Portuguese (BR), freelancer, contract
    [
        ("user", "oi! sou freelancer de tradução e um cliente novo pediu um contrato simples. meus dados: {name}, {id_kind} {id}, endereço {address}. cliente: {name2}. valor R$ 2.500, pagamento em duas parcelas"),
        ("assistant", "Claro! Aqui vai um modelo básico:\n\n**CONTRATO DE PRESTAÇÃO DE SERVIÇOS DE TRADUÇÃO**\n\n**CONTRATADA:** {name}, {id_kind} {id}, residente em {address}.\n\n**CONTRATANTE:** {name2}.\n\n**Cláusula 1ª – Objeto:** Tradução de documentos conforme orçamento aprovado.\n\n**Cláusula 2ª – Valor:** R$ 2.500,00, pagos em duas parcelas de R$ 1.250,00: a primeira na assinatura e a segunda na entrega.\n\n_________________________\n{name}\n\n_________________________\n{name2}"),
        ("user", "ótimo. o cliente quer pagar a primeira parcela no cartão, ele me mandou o número {card} pelo whatsapp 😬 posso colocar no contrato?"),
        ("assistant", "Melhor não! O número do cartão ({card}) não deve aparecer no contrato nem ficar guardado em conversas. Use um link de pagamento (Mercado Pago, PagSeguro etc.) para que o próprio {first2} digite os dados, e apague a mensagem com o número do cartão."),
    ],
    # 20. Czech, nurse, patient transport / neighbour
    [
        ("user", "ahoj, pracuju jako zdravotní sestra a potřebuju napsat krátkou zprávu pro sanitku, že pan {name2} bude odvezen z domova. adresa je {street}, {post} {city}, zvonek je na jméno {surname}. kontakt na dceru {phone}"),
        ("assistant", "Ahoj, tady je návrh:\n\n„Dobrý den, prosím o převoz pacienta pana {name2} z adresy {address}. Zvonek: {surname}. V případě potřeby kontaktujte dceru pacienta na čísle {phone}. Děkuji, {name}.“"),
        ("user", "díky. jen oprava, zvonek je na jméno dcery, ne moje příjmení. ona se jmenuje {first3} a má jiné příjmení po svatbě"),
        ("assistant", "Jasně, omlouvám se. Opravená verze:\n\n„Dobrý den, prosím o převoz pacienta pana {name2} z adresy {address}. Zvonek je na jméno dcery ({first3}), prosím zvoňte tam. Kontakt na dceru: {phone}. Děkuji, {name}.“"),
    ],
    # 21. Hungarian, household, electricity bill dispute
    [
        ("user", "Szia! Az áramszolgáltató kétszer vonta le a havi díjat a számlámról. Segítenél egy panaszlevelet írni? Nevem {name}, cím: {address}, ügyfélazonosító ({id_kind}): {id}, bankszámla: {iban}"),
        ("assistant", "Szia! Persze, itt egy javaslat:\n\nTárgy: Kétszeres terhelés visszatérítése – {id}\n\nTisztelt Ügyfélszolgálat!\n\nAlulírott {name} ({address}) jelzem, hogy a havi díjat e hónapban kétszer terhelték meg a(z) {iban} számú bankszámlámon. Kérem, a jogtalanul levont összeget 15 napon belül utalják vissza ugyanerre a számlára.\n\nÜgyfélazonosítóm: {id}\n\nTisztelettel:\n{name}"),
        ("user", "köszi! a férjem, {name2} nevén van a szerződés amúgy, az baj?"),
        ("assistant", "Akkor jobb, ha {name2} írja alá a levelet, vagy legalább kerüljön bele egy mondat: „A szerződés {name2} nevén van, a panaszt az ő beleegyezésével nyújtom be.” Így az ügyfélszolgálat nem utasítja el formai okból."),
    ],
    # 22. Danish, household, moving, message to landlord (address_lower)
    [
        ("user", "hej, vi flytter ind i en ny lejlighed næste måned og udlejeren vil have vores oplysninger. kan du skrive en kort besked? vi er {name} og {name2}. den nye adresse er {address_lower} (jeg ved ikke hvorfor han skriver den med småt i kontrakten lol)"),
        ("assistant", "Selvfølgelig! Her er et forslag:\n\n\"Hej,\n\nTak for en god fremvisning. Her er vores oplysninger til lejekontrakten for lejligheden på {address}:\n\nLejere: {name} og {name2}\nTelefon: [?]\nE-mail: [?]\n\nVi glæder os til at flytte ind!\n\nVenlig hilsen\n{first} og {first2}\"\n\nSkriv telefonnummer og e-mail, så sætter jeg dem ind."),
        ("user", "tlf {phone}, mail {email}"),
        ("assistant", "\"Hej,\n\nTak for en god fremvisning. Her er vores oplysninger til lejekontrakten for lejligheden på {address}:\n\nLejere: {name} og {name2}\nTelefon: {phone}\nE-mail: {email}\n\nVi glæder os til at flytte ind!\n\nVenlig hilsen\n{first} og {first2}\""),
    ],
    # 23. German, office Slack-like: wifi + company card
    [
        ("system", "Exportierter Verlauf aus dem Team-Workspace #buero-allgemein."),
        ("user", "@assistant kannst du eine kurze Nachricht für den Kanal formulieren: das WLAN für Gäste wurde geändert, neuer Schlüssel ist {password}. Außerdem: die Firmenkreditkarte für Büromaterial ist ab jetzt die {card}, Bestellungen bitte nur über {first2}."),
        ("assistant", "Klar, hier ein Vorschlag:\n\n📢 **Kurzes Update fürs Büro**\n\n1. Das Gäste-WLAN hat einen neuen Schlüssel: `{password}`\n2. Büromaterial wird ab sofort über die Firmenkarte bestellt. Bitte schickt eure Wünsche an {first2}, die/der sich um die Bestellung kümmert.\n\nDanke euch! 🙌\n\nDie Kartennummer ({card}) würde ich übrigens nicht in einen Kanal posten, in dem alle mitlesen. Es reicht, wenn {first2} sie hat."),
        ("user", "stimmt, gute idee. kartennr lass ich raus. und schreib noch dazu, dass {name} ab montag urlaub hat und vertretung ist {first3}"),
        ("assistant", "📢 **Kurzes Update fürs Büro**\n\n1. Das Gäste-WLAN hat einen neuen Schlüssel: `{password}`\n2. Büromaterial bitte über {first2} bestellen.\n3. {name} ist ab Montag im Urlaub – Vertretung übernimmt {first3}.\n\nDanke euch! 🙌"),
    ],
    # 24. French, dinner guest list as markdown table
    [
        ("user", "salut ! j'organise un dîner d'anniv samedi pour ma mère et j'ai noté les invités n'importe comment. tu peux me faire un tableau propre ?\n\n{name} - {phone} - vient avec {first3}\n{name2}, mail {email}, pas de tel\nmoi aussi évidemment"),
        ("assistant", "Voici ton tableau :\n\n| Invité | Téléphone | E-mail | Accompagné(e) de |\n|---|---|---|---|\n| {name} | {phone} | – | {first3} |\n| {name2} | – | {email} | – |\n| Toi | – | – | – |\n\nÇa fait donc 4 personnes avec toi, sans compter ta mère. Tu veux que je prépare un message d'invitation à envoyer à {first} et à {first2} ?"),
        ("user", "oui stp, un sms court pour {first} et un mail pour {first2}"),
        ("assistant", "**SMS pour {first} ({phone}) :**\n« Coucou {first} ! Dîner surprise pour l'anniv de maman samedi à 20h chez moi. Tu viens avec {first3} ? Réponds-moi vite 😊 »\n\n**Mail pour {first2} ({email}) :**\nObjet : Dîner d'anniversaire samedi\n\n« Bonjour {first2},\n\nJ'organise un dîner pour l'anniversaire de ma mère ce samedi à 20h. Ça nous ferait très plaisir que tu sois là ! Peux-tu me confirmer ta présence d'ici jeudi ?\n\nÀ bientôt ! »"),
    ],
]


HELD_OUT_24_TEMPLATES: list[list[tuple[str, str]]] = [
    # 1 English - deposit email to landlord
    [
        ("user", "can you help me write an email to my old landlord? i moved out of {address} three weeks ago and still havent got my deposit back. he said he'd transfer it to my account ({iban}) 'within a few days'. keep it polite but firm"),
        ("assistant", "Of course. Here's a draft:\n\nSubject: Return of deposit - {street}\n\nDear {name2},\n\nI moved out of {address} on the agreed date and returned all keys. As discussed, the deposit was to be transferred to my account {iban} within a few days, but three weeks later I have not received it.\n\nCould you please confirm when the transfer will be made? If there are any deductions, I would appreciate an itemised list.\n\nKind regards,\n{name}"),
        ("user", "perfect, maybe add my number so he can call, its {phone}"),
        ("assistant", "Sure, add this line before the sign-off:\n\nIf it's easier to discuss by phone, you can reach me on {phone}.\n\nKind regards,\n{name}\n{phone}"),
    ],
    # 2 German - cancel gym membership
    [
        ("user", "Hallo, ich möchte meinen Fitnessstudio-Vertrag kündigen. Kannst du mir ein Kündigungsschreiben aufsetzen? Meine Mitgliedsnummer ist {id}, Vertrag läuft auf {name}, wohne jetzt in {address}."),
        ("assistant", "Gerne, hier ein Entwurf:\n\n{name}\n{address_lines}\n\nKündigung meiner Mitgliedschaft, Mitgliedsnummer {id}\n\nSehr geehrte Damen und Herren,\n\nhiermit kündige ich meine Mitgliedschaft fristgerecht zum nächstmöglichen Zeitpunkt. Bitte bestätigen Sie mir die Kündigung sowie das Vertragsende schriftlich.\n\nEine Einzugsermächtigung widerrufe ich zum Vertragsende.\n\nMit freundlichen Grüßen\n{name}"),
        ("user", "danke! die wollen aber noch ne email adresse für die bestätigung, schreib {email} mit rein"),
        ("assistant", "Klar, ergänze nach dem zweiten Absatz:\n\nDie Bestätigung senden Sie bitte an {email}.\n\nDer Rest bleibt gleich."),
    ],
    # 3 French - message to plumber, number in words
    [
        ("user", "tu peux corriger mon message pour le plombier stp? \"bonjour, c est {first} du {address_lower}, la fuite sous l evier a recommencé, vous pouvez passer jeudi? mon num c est le {phone} (zero six quarante deux si ca passe pas)\""),
        ("assistant", "Voici une version corrigée :\n\n« Bonjour, c'est {first} {surname}, au {address}. La fuite sous l'évier a recommencé. Pourriez-vous passer jeudi ? Vous pouvez me joindre au {phone}. Merci d'avance ! »"),
        ("user", "top merci. et si c est sa femme qui répond, elle s appelle {first2}, je commence par quoi?"),
        ("assistant", "Tu peux simplement commencer par « Bonjour {first2}, » puis garder le reste du message tel quel."),
    ],
    # 4 Spanish - fill JSON form
    [
        ("user", "Necesito rellenar este JSON para el formulario de inscripción del curso, ¿me lo completas con mis datos? Soy {name}, correo {email}, teléfono {phone}, vivo en {city}.\n\n{{\n  \"nombre\": \"\",\n  \"email\": \"\",\n  \"telefono\": \"\",\n  \"ciudad\": \"\",\n  \"newsletter\": false\n}}"),
        ("assistant", "Aquí lo tienes:\n\n```json\n{{\n  \"nombre\": \"{name}\",\n  \"email\": \"{email}\",\n  \"telefono\": \"{phone}\",\n  \"ciudad\": \"{city}\",\n  \"newsletter\": false\n}}\n```\n\nSi quieres recibir novedades del curso, cambia `newsletter` a `true`."),
        ("user", "vale, y añade un campo para el contacto de emergencia, mi hermana {name2}"),
        ("assistant", "```json\n{{\n  \"nombre\": \"{name}\",\n  \"email\": \"{email}\",\n  \"telefono\": \"{phone}\",\n  \"ciudad\": \"{city}\",\n  \"contacto_emergencia\": \"{name2}\",\n  \"newsletter\": false\n}}\n```"),
    ],
    # 5 Italian - summarise forwarded thread
    [
        ("user", "Mi riassumi questo thread? Devo capire cosa vuole il condominio.\n\n---------- Messaggio inoltrato ----------\nDa: {name2} <{email}>\nOggetto: Re: lavori facciata\n\nGentile {surname},\ncome anticipato a voce, i lavori alla facciata di {street} inizieranno il 3 del mese. Le chiediamo di liberare il balcone entro quella data. Per qualsiasi dubbio mi chiami al {phone}.\n\nCordiali saluti,\n{name2}\nAmministratore condominiale\n{email} | {phone}"),
        ("assistant", "In breve: {name2}, l'amministratore, ti informa che i lavori alla facciata di {street} partono il 3 del mese e ti chiede di liberare il balcone entro quella data. Per domande puoi chiamarlo al {phone} o scrivere a {email}."),
        ("user", "ok grazie. scrivigli due righe che va bene, firmo {first}"),
        ("assistant", "Gentile {first2},\n\ngrazie per l'avviso. Libererò il balcone entro il 3 del mese.\n\nCordiali saluti,\n{first}"),
    ],
    # 6 Polish - translate message with IBAN
    [
        ("user", "przetłumacz na angielski proszę, to do kolegi z pracy w Londynie:\n\n\"Cześć {first2}, oddaj mi proszę te 40 funtów za bilety na koncert. Przelej na moje konto {iban}, tytuł: bilety. Dzięki! {name}\""),
        ("assistant", "Here's the translation:\n\n\"Hi {first2}, could you please pay me back the 40 pounds for the concert tickets? Please transfer it to my account {iban}, reference: tickets. Thanks! {name}\""),
        ("user", "a jak on nie ma przelewów międzynarodowych to może na revoluta na numer {phone}, dopisz to"),
        ("assistant", "\"Hi {first2}, could you please pay me back the 40 pounds for the concert tickets? Please transfer it to my account {iban}, reference: tickets. If an international transfer is a hassle, you can also send it via Revolut to {phone}. Thanks! {name}\""),
    ],
    # 7 Dutch - Python code review with card and password
    [
        ("user", "Kun je even naar mijn testscript kijken? Hij faalt bij de betaling.\n\n```python\nimport requests\n\nklant = {{\n    \"naam\": \"{name}\",\n    \"kaart\": \"{card}\",\n    \"email\": \"{email}\",\n}}\n\nr = requests.post(\"https://shop.local/api/pay\", json=klant, auth=(\"{first_lower}\", \"{password}\"))\nprint(r.status_code, r.json()[\"status\"]\n```"),
        ("assistant", "Er ontbreekt een sluitend haakje op de laatste regel. Zo werkt het:\n\n```python\nprint(r.status_code, r.json()[\"status\"])\n```\n\nVerder een tip: zet `{password}` en het kaartnummer `{card}` niet hard in je script. Gebruik liever omgevingsvariabelen:\n\n```python\nimport os\nauth = (\"{first_lower}\", os.environ[\"SHOP_PASSWORD\"])\n```"),
        ("user", "ah stom. en het wachtwoord is toch maar van de testomgeving hoor"),
        ("assistant", "Snap ik, maar ook testwachtwoorden belanden vaak in git. Als `{password}` ergens anders ook gebruikt wordt, zou ik het wijzigen."),
    ],
    # 8 Portuguese - SQL insert
    [
        ("user", "Pode me ajudar com esse SQL? Dá erro de sintaxe.\n\nINSERT INTO clientes (nome, email, cpf, cidade)\nVALUES ('{name}', '{email}', '{id}' '{city}');"),
        ("assistant", "Falta uma vírgula entre o CPF e a cidade. A versão corrigida:\n\n```sql\nINSERT INTO clientes (nome, email, cpf, cidade)\nVALUES ('{name}', '{email}', '{id}', '{city}');\n```"),
        ("user", "valeu! e pra inserir tb a {name2}, mesma cidade, email {first2}@gmail.com, sem cpf por enquanto?"),
        ("assistant", "```sql\nINSERT INTO clientes (nome, email, cpf, cidade)\nVALUES\n  ('{name}', '{email}', '{id}', '{city}'),\n  ('{name2}', '{first2}@gmail.com', NULL, '{city}');\n```\n\nO `NULL` deixa o CPF vazio até você ter o número."),
    ],
    # 9 Czech - CSV check
    [
        ("user", "Ahoj, můžeš mi zkontrolovat tohle CSV? Import do účetnictví hlásí chybu na druhém řádku.\n\njmeno;email;telefon;ucet\n{name};{email};{phone};{iban}\n{name2};{first2}.novak@seznam.cz;{phone}\n{first3} Dvořák;;;"),
        ("assistant", "Na druhém datovém řádku ({name2}) chybí poslední sloupec, takže má jen tři hodnoty místo čtyř. Doplň prázdný středník na konec:\n\n```\njmeno;email;telefon;ucet\n{name};{email};{phone};{iban}\n{name2};{first2}.novak@seznam.cz;{phone};\n{first3} Dvořák;;;\n```\n\nMimochodem, {name} a {name2} mají stejné telefonní číslo {phone}, je to schválně?"),
        ("user", "jo to je jejich společná pevná linka, dík"),
    ],
    # 10 Hungarian - blocked card email to bank
    [
        ("user", "Segíts megírni egy emailt a bankomnak! Tegnap letiltották a kártyámat ({card}) mert gyanús tranzakció volt, de én voltam, szállást foglaltam. Kérem hogy oldják fel. Telefonon nem érem el őket."),
        ("assistant", "Természetesen, íme egy javaslat:\n\nTárgy: Letiltott bankkártya feloldása\n\nTisztelt Ügyfélszolgálat!\n\nTegnap a {card} számú bankkártyámat gyanús tranzakció miatt letiltották. Szeretném jelezni, hogy a tranzakciót én kezdeményeztem (szállásfoglalás), ezért kérem a kártya mielőbbi feloldását.\n\nÜdvözlettel:\n[Név]"),
        ("user", "a név {name}, és írd bele hogy a {phone} számon hívjanak vissza légyszi. meg a kártyaszámnak csak a végét írd"),
        ("assistant", "Tárgy: Letiltott bankkártya feloldása\n\nTisztelt Ügyfélszolgálat!\n\nTegnap a bankkártyámat gyanús tranzakció miatt letiltották. A tranzakciót én kezdeményeztem (szállásfoglalás), ezért kérem a kártya mielőbbi feloldását. Visszahívást a {phone} telefonszámon kérek.\n\nÜdvözlettel:\n{name}\n\nA kártyaszámból elég az utolsó négy számjegyet megadni, a teljes számot ({card}) emailben inkább ne küldd el."),
    ],
    # 11 Danish - letter to kommune
    [
        ("system", "Du er en hjælpsom assistent, der svarer på dansk."),
        ("user", "jeg skal skrive til kommunen om at min datter skal skifte skole. hun hedder {first3}, jeg er {name}, vi bor {address}. de vil have mit cpr, det er {id}. kan du lave et kort brev"),
        ("assistant", "Her er et forslag:\n\n{name}\n{address_lines}\nCPR: {id}\n\nVedr.: Skoleskift for {first3} {surname}\n\nKære Børne- og Skoleforvaltning\n\nJeg vil gerne ansøge om, at min datter {first3} skifter skole fra næste skoleår. Vi bor på {street} i {city}, og vi ønsker, at hun går på distriktsskolen.\n\nJeg ser frem til at høre fra jer.\n\nMed venlig hilsen\n{name}"),
        ("user", "super, tilføj lige min mail {email} nederst"),
        ("assistant", "Med venlig hilsen\n{name}\n{email}"),
    ],
    # 12 English - Slack-like, password shared casually
    [
        ("user", "summarise this slack thread for me, i was out:\n\n{name2}  9:12 AM\nwifi in the new office is up, network is Office-5G\n{name2}  9:13 AM\nkey is {password} btw, dont share outside the team\n{name}  9:20 AM\nthx! also who has the card for the parking? mine expired\n{first3}  9:41 AM\n@{first} I do, desk by the window"),
        ("assistant", "Quick summary:\n- {name2} announced the new office wifi (Office-5G); the key is {password}, and it's for the team only.\n- {first} asked about the parking card because theirs expired.\n- {first3} has the parking card, at the desk by the window."),
        ("user", "lol the parking thing was me. ok cool so what do i type for the wifi again"),
        ("assistant", "Network: Office-5G\nKey: {password}"),
    ],
    # 13 English - YAML config
    [
        ("user", "why does this docker-compose not pick up my mail settings?\n\n```yaml\nservices:\n  app:\n    image: myapp:latest\n    environment:\n      SMTP_USER: {email}\n      SMTP_PASS: {password}\n      ADMIN_NAME: {name}\n  env_file: .env\n```"),
        ("assistant", "`env_file` is at the wrong indentation level: it's a sibling of `app` instead of a key inside it. Fix:\n\n```yaml\nservices:\n  app:\n    image: myapp:latest\n    env_file: .env\n    environment:\n      SMTP_USER: {email}\n      SMTP_PASS: ${{SMTP_PASS}}\n      ADMIN_NAME: \"{name}\"\n```\n\nI'd also move `{password}` into `.env` as `SMTP_PASS={password}` and keep `.env` out of version control. Quoting the name helps if it ever contains special characters."),
        ("user", "thanks. {first2} from devops says we also need the alert phone, its {phone}"),
        ("assistant", "Add it under `environment`:\n\n```yaml\n      ALERT_PHONE: \"{phone}\"\n```\n\nQuote it so YAML doesn't treat a leading + or 0 oddly."),
    ],
    # 14 German - markdown table of team contacts
    [
        ("user", "mach mir aus dieser liste bitte eine markdown tabelle für unser wiki\n\n{name} - Teamleitung - {email} - {phone}\n{name2}, Buchhaltung, durchwahl 214\n{first3} (Azubi) hat noch keine mail"),
        ("assistant", "| Name | Rolle | E-Mail | Telefon |\n|---|---|---|---|\n| {name} | Teamleitung | {email} | {phone} |\n| {name2} | Buchhaltung | – | Durchwahl 214 |\n| {first3} | Auszubildende/r | – | – |"),
        ("user", "perfekt. {surname}s Handy ist eigentlich privat, kannst du stattdessen \"über Zentrale\" schreiben?"),
        ("assistant", "| Name | Rolle | E-Mail | Telefon |\n|---|---|---|---|\n| {name} | Teamleitung | {email} | über Zentrale |\n| {name2} | Buchhaltung | – | Durchwahl 214 |\n| {first3} | Auszubildende/r | – | – |"),
    ],
    # 15 French - broken export with ??? separators
    [
        ("user", "J'ai exporté mes contacts depuis le vieux logiciel et les adresses sont toutes comme ça : {address_qq}. Tu peux me remettre celle de {name} au bon format pour une enveloppe ?"),
        ("assistant", "Bien sûr. Les « ??? » remplacent les retours à la ligne. Pour l'enveloppe :\n\n{name}\n{address_lines}"),
        ("user", "merci! et en formule excel pour remplacer les ??? dans toute la colonne B ?"),
        ("assistant", "Tu peux utiliser :\n\n```\n=SUBSTITUE(B2;\"???\";CAR(10))\n```\n\nPuis active « Renvoyer à la ligne automatiquement » sur la colonne. Par exemple, « {address_qq} » deviendra trois lignes."),
    ],
    # 16 Spanish - casual lower case, card
    [
        ("user", "oye una duda, me llegó un sms de que mi tarjeta {card} se ha usado en amazon por 300 euros y yo no he sido. el sms dice que llame al {phone}. es normal??"),
        ("assistant", "Ten mucho cuidado: es un patrón típico de fraude (smishing). No llames al {phone} del SMS ni des ningún dato. Llama al número que aparece en el reverso de tu tarjeta o en la app de tu banco, y revisa allí si de verdad hay un cargo de 300 € en la tarjeta {card}."),
        ("user", "vale ya he llamado al banco, era falso. mi suegra {name2} tambien lo recibio, le escribo algo?"),
        ("assistant", "Sí, algo así:\n\n\"Hola {first2}, si te ha llegado un SMS diciendo que se ha usado tu tarjeta en Amazon, es una estafa. No llames al número que pone ni des datos. Si tienes dudas, llama directamente a tu banco. Un beso, {first}\""),
    ],
    # 17 Italian - CV fix
    [
        ("user", "Puoi sistemare l'intestazione del mio CV? Sembra disordinata.\n\n{name_lower}\nvia... {address}\ncell {phone} mail {email}\nnato a {city}"),
        ("assistant", "Ecco una versione più ordinata:\n\n**{name}**\n{address}\nTel.: {phone} · Email: {email}\n\nIl luogo di nascita ({city}) in genere non è necessario in un CV; puoi toglierlo, a meno che non sia richiesto."),
        ("user", "ok, e per la lettera di presentazione inizio con \"Gentile dott.ssa {surname}\"? no aspetta, la selezionatrice si chiama {name2}"),
        ("assistant", "Allora scrivi: \"Gentile dott.ssa {name2},\" oppure, più formale, solo con il cognome se lo preferisci. Poi chiudi la lettera con:\n\nCordiali saluti,\n{name}\n{phone}"),
    ],
    # 18 Polish - shell script with password
    [
        ("user", "mam skrypt do backupu i nie działa mysqldump, co jest źle?\n\n```bash\n#!/bin/bash\nDB_USER={first_lower}\nDB_PASS='{password}'\nmysqldump -u $DB_USER -p $DB_PASS sklep > /backup/sklep_$(date +%F).sql\n```"),
        ("assistant", "Przy `-p` hasło musi być doklejone bez spacji, inaczej mysqldump traktuje `{password}` jako nazwę bazy. Poprawnie:\n\n```bash\nmysqldump -u \"$DB_USER\" -p\"$DB_PASS\" sklep > /backup/sklep_$(date +%F).sql\n```\n\nBezpieczniej jednak trzymać dane w `~/.my.cnf`:\n\n```ini\n[mysqldump]\nuser={first_lower}\npassword={password}\n```\n\ni nadać plikowi `chmod 600`."),
        ("user", "dzięki działa. wyślę to {first2}, on ma drugi serwer, jego mail to {email}"),
        ("assistant", "Jasne. Tylko zanim wyślesz, usuń z pliku hasło `{password}` — niech {first2} wpisze swoje w swoim `~/.my.cnf`."),
    ],
    # 19 Dutch - invoice email, possessive
    [
        ("user", "Kun je een nette mail schrijven naar een klant die al twee maanden niet betaald heeft? Factuur 2024-031, € 850. Klant is {name2}. Mijn gegevens: {name}, {email}, rekening {iban}."),
        ("assistant", "Onderwerp: Herinnering factuur 2024-031\n\nBeste {first2},\n\nUit onze administratie blijkt dat factuur 2024-031 van € 850 nog niet is voldaan. Wil je het bedrag binnen 14 dagen overmaken naar {iban} t.n.v. {name}, onder vermelding van het factuurnummer?\n\nHeb je inmiddels betaald, dan kun je deze mail als niet verzonden beschouwen.\n\nMet vriendelijke groet,\n{name}\n{email}"),
        ("user", "goed. {first2}'s boekhouder heet trouwens {first3}, moet die in cc?"),
        ("assistant", "Dat is verstandig, zeker als {first3} de betalingen regelt. Zet het adres van {first3} in cc en begin eventueel met \"Beste {first2} en {first3},\"."),
    ],
    # 20 Portuguese - complaint (system turn)
    [
        ("system", "You are a helpful assistant. Answer in the user's language."),
        ("user", "quero fazer uma reclamação na loja online, cobraram duas vezes no meu cartão {card}. pedido no nome de {name}, entrega na {street}, {city}. me ajuda a escrever?"),
        ("assistant", "Claro! Sugestão:\n\nAssunto: Cobrança em duplicidade\n\nOlá,\n\nMeu nome é {name} e fiz um pedido com entrega na {street}, {city}. Ao conferir a fatura, percebi que a compra foi cobrada duas vezes no cartão final {card}.\n\nSolicito o estorno da cobrança duplicada o quanto antes.\n\nAtenciosamente,\n{name}"),
        ("user", "coloca meu whats tb: {phone}"),
        ("assistant", "Atenciosamente,\n{name}\nWhatsApp: {phone}"),
    ],
    # 21 Czech - translate password reset note
    [
        ("user", "Přelož mi to do angličtiny, posílám to kolegyni do Dublinu:\n\n\"Ahoj {first2}, resetovala jsem ti přístup do systému. Přihlašovací jméno je {email}, dočasné heslo {password}, po prvním přihlášení si ho změň. Kdyby něco, volej na {phone}. {first}\""),
        ("assistant", "\"Hi {first2}, I've reset your access to the system. Your login is {email} and your temporary password is {password}. Please change it after you first log in. If anything comes up, call me on {phone}. {first}\""),
        ("user", "díky, a zní to přirozeně? nechci aby to bylo moc formální"),
        ("assistant", "Ano, je to přirozené. Pokud chceš ještě uvolněnější tón, můžeš začít „Hey {first2}!\" a zakončit „Cheers, {first}\"."),
    ],
    # 22 Hungarian - guest list
    [
        ("user", "Szülinapi bulit szervezek, rendezd ábécé sorrendbe a vendéglistát és írd mellé kinek kell még szólni:\n\n- {name2} (már igent mondott)\n- {first3} Kovács\n- {name}, aki hozza a tortát\n- {first2} párja, még nem tudom a nevét"),
        ("assistant", "Vendéglista:\n\n1. {first3} Kovács – még szólni kell\n2. {name} – igen, hozza a tortát\n3. {name2} – igen\n4. {first2} párja – még szólni kell (név ismeretlen)\n\nMegjegyzés: vezetéknév szerint rendeztem, ahol volt."),
        ("user", "köszi. a meghívóba írd bele a címet is: {address}, és hogy {first}-nál lehet jelezni a {phone} számon"),
        ("assistant", "Kedves Barátaim!\n\nSzeretettel meghívlak a szülinapi bulimra!\nHelyszín: {address}\n\nKérlek, jelezzétek, ha jöttök: {first}-nál a {phone} számon.\n\nVárok mindenkit!"),
    ],
    # 23 Danish - sublet contract
    [
        ("user", "Hej, kan du tjekke min fremlejekontrakt for fejl? Det er bare den del med parterne:\n\nUdlejer: {name}, {address}\nLejer: {name2}\nHusleje betales den 1. i måneden til konto {iban}\nKontakt: {email}"),
        ("assistant", "Det ser fint ud. Et par forslag:\n\n- Tilføj lejers nuværende adresse og kontaktoplysninger, ikke kun {name2}s navn.\n- Skriv beløbet for huslejen.\n- Angiv om {iban} er en dansk eller udenlandsk konto, hvis lejer skal betale fra udlandet.\n\nForslag til formulering:\n\nUdlejer: {name}, {address}, e-mail: {email}\nLejer: {name2}, [adresse], [e-mail]\nHuslejen på [beløb] kr. betales forud den 1. i hver måned til konto {iban}."),
        ("user", "tak. {first2} siger hun også vil have mit pasnummer med, er det normalt? det er {id}"),
        ("assistant", "Det er ikke almindeligt i en fremlejekontrakt. Navn og adresse er normalt nok til at identificere parterne. Vil {first2} alligevel have {id_kind} med, kan du vise passet ved underskrivelsen i stedet for at skrive {id} ind i kontrakten."),
    ],
    # 24 English - support reply formatting (system turn)
    [
        ("system", "You help a small business owner write replies to customers. Keep replies short and friendly."),
        ("user", "customer writes: 'hi, this is {name}, i ordered a standing desk last week, order went to {address_lines}\nbut tracking says delivered and nothing here. my {id_kind} is {id} if you need it.' draft a reply pls"),
        ("assistant", "Hi {first},\n\nThanks for getting in touch, and sorry your desk hasn't arrived. I can see it was shipped to:\n\n{address_lines}\n\nI've opened an investigation with the courier. It can take up to 48 hours; I'll update you as soon as I hear back. There's no need to send your {id_kind} ({id}). We don't need it to sort this out, so please don't share it with us.\n\nBest,\n[Your name]"),
        ("user", "sign it from {name2} and mention they can also call {phone}"),
        ("assistant", "...I'll update you as soon as I hear back. If you'd prefer to talk, call us on {phone}.\n\nBest,\n{name2}"),
    ],
]


HELD_OUT_25_TEMPLATES: list[list[tuple[str, str]]] = [
    # 1 English, casual, deposit letter
    [
        ("user", """ok so i moved out of my flat 3 weeks ago and the landlord still hasnt sent back my deposit (950 quid). can you write a short firm letter? my details:
{name}
new address {address}
bank for the refund: {iban}"""),
        ("assistant", """Of course. Here's a firm but polite letter you can send:

{name}
{address_lines}

[Date]

Dear [Landlord's name],

Re: Return of tenancy deposit

I moved out of [old address] on [date] and returned all keys on the same day. Three weeks have now passed and I have not yet received my deposit of £950, nor any explanation for the delay.

Please transfer the full amount within 14 days of this letter to the following account:

Account holder: {name}
IBAN: {iban}

If there are any deductions you intend to make, please send me an itemised list with evidence. Otherwise I will have to raise a dispute with the deposit protection scheme.

Yours sincerely,

{name}"""),
        ("user", "perfect. can you make it slightly less aggressive, he's actually been nice before"),
        ("assistant", """Sure, here's a softer version of the middle part:

"I hope you're well. I just wanted to follow up on my deposit of £950. It's been about three weeks since I moved out, so I thought I'd check in. Could you transfer it to my account ({iban}, account holder {name}) when you get a chance? If there's anything you need from me, just let me know."

You can keep the header and the sign-off from before."""),
    ],
    # 2 German, gym cancellation
    [
        ("user", """Hallo, ich möchte meinen Vertrag beim Fitnessstudio kündigen, zum nächstmöglichen Termin. Mitgliedsnummer hab ich grad nicht, aber meine Ausweisnummer ist {id} falls das hilft?? Name {name}, wohne {address}"""),
        ("assistant", """Gerne! Hier ist ein Entwurf:

{name}
{address}

An
[Name des Fitnessstudios]
[Adresse]

Kündigung meiner Mitgliedschaft

Sehr geehrte Damen und Herren,

hiermit kündige ich meine Mitgliedschaft fristgerecht zum nächstmöglichen Zeitpunkt. Meine Mitgliedsnummer liegt mir derzeit nicht vor; zur Identifikation gebe ich meine Ausweisnummer {id} an.

Bitte bestätigen Sie mir den Eingang der Kündigung sowie das Vertragsende schriftlich.

Mit freundlichen Grüßen

{name}

Hinweis: Eigentlich musst du keine Ausweisnummer angeben – Name, Anschrift und Geburtsdatum reichen dem Studio in der Regel, um dich zuzuordnen."""),
    ],
    # 3 English, Python KeyError
    [
        ("user", """why does this throw KeyError: 'phone'

```python
customers = [
    {{"name": "{name}", "email": "{email}", "Phone": "{phone}"}},
    {{"name": "{name2}", "email": "{email}", "card": "{card}"}},
]

for c in customers:
    print(f"{{c['name']}} -> {{c['phone']}}")
```"""),
        ("assistant", """Two things are going on:

1. The first dict uses the key `"Phone"` with a capital P. Dictionary keys are case-sensitive, so `c['phone']` doesn't find it.
2. The second dict has no phone key at all – it has `"card"` instead.

Use `.get()` with a fallback:

```python
for c in customers:
    phone = c.get("phone") or c.get("Phone") or "n/a"
    print(f"{{c['name']}} -> {{phone}}")
```

That prints:

```
{name} -> {phone}
{name2} -> n/a
```

Side note: I'd avoid keeping a real card number like `{card}` in source code, even for testing – use a test number from your payment provider instead."""),
    ],
    # 4 English, SQL + JSON
    [
        ("user", """postgres is complaining: ERROR:  syntax error at or near "s"

```sql
INSERT INTO contacts (full_name, email, phone, street, postcode, city)
VALUES ('{name}', '{email}', '{phone}', '{street}', '{post}', '{city}');
INSERT INTO contacts (full_name, email, phone, street, postcode, city)
VALUES ('{name2}', NULL, NULL, 'St John's Road 4', '{post}', '{city}');
```"""),
        ("assistant", """The problem is the apostrophe in `St John's Road` – it ends the string literal early, so Postgres sees a stray `s`. Escape it by doubling the single quote:

```sql
INSERT INTO contacts (full_name, email, phone, street, postcode, city)
VALUES
  ('{name}', '{email}', '{phone}', '{street}', '{post}', '{city}'),
  ('{name2}', NULL, NULL, 'St John''s Road 4', '{post}', '{city}');
```

Better still, use parameterised queries from your application code so you never have to escape by hand."""),
        ("user", "and how would the first row look as json for the api?"),
        ("assistant", """Like this:

```json
{{
  "full_name": "{name}",
  "email": "{email}",
  "phone": "{phone}",
  "address": {{
    "street": "{street}",
    "postcode": "{post}",
    "city": "{city}"
  }}
}}
```"""),
    ],
    # 5 French, attestation d'hébergement
    [
        ("user", """bonjour, je dois faire une attestation d'hébergement pour mon amie {name2} qui habite chez moi depuis mars. moi c'est {name}, {address}. tu peux me faire un modèle ?"""),
        ("assistant", """Bien sûr ! Voici un modèle :

ATTESTATION D'HÉBERGEMENT

Je soussigné(e) {name}, demeurant au {street}, {post} {city}, atteste sur l'honneur héberger à mon domicile {name2} depuis le [date] mars 2024.

Fait pour servir et valoir ce que de droit.

Fait à {city}, le [date]

Signature :

Pièces à joindre : une copie de ta pièce d'identité et un justificatif de domicile récent (facture d'électricité, quittance de loyer…)."""),
        ("user", "merci !! est-ce que {first2} doit signer aussi ?"),
        ("assistant", """Non, seule la personne qui héberge signe, donc toi, {first}. {first2} joint simplement l'attestation à son dossier, avec la copie de ta pièce d'identité et ton justificatif de domicile."""),
    ],
    # 6 English, forwarded email
    [
        ("user", """can u summarise this and tell me what i need to do

---------- Forwarded message ---------
From: {name} <{email}>
Date: Tue, 14 May 2024 at 09:12
Subject: Re: handover for the Leeds account
To: {name2}

Hi {first2},

Quick one before I go on leave – the client wants the revised quote by Friday. Pricing sheet is in the shared drive under /Q2. If anything is urgent while I'm away, ring me on {phone}, but please only if it's really on fire.

Cheers,
{first}

--
{name}
Senior Account Manager
M: {phone}
{email}"""),
        ("assistant", """Summary: {first} ({name}) is going on leave and is handing the Leeds account over to you.

What you need to do:
1. Send the client the revised quote by Friday.
2. Use the pricing sheet in the shared drive under /Q2.
3. Only contact {first} on {phone} if something is genuinely urgent – otherwise it can wait until they're back."""),
    ],
    # 7 English, wifi key, lower-case
    [
        ("user", "my router keeps rejecting the wifi key i set. its {password} is there some character it doesnt like? model is a tp link archer c6"),
        ("assistant", """A few things commonly cause this on TP-Link Archer routers:

- WPA2/WPA3 keys must be between 8 and 63 characters.
- Some firmware versions refuse certain characters, e.g. spaces at the start or end, quotes, or non-ASCII letters like ä or ł.
- If you're using the Tether app, try the web interface (192.168.0.1) instead – the app has been known to be stricter.

Also, since you've posted the key here, I'd pick a new one anyway once you've got it working."""),
        ("user", "ok will change it to something with {first_lower} and my birth year then lol"),
        ("assistant", "That works technically, but a name plus a birth year is easy to guess. A few random words strung together (e.g. four words with a number in between) is much stronger and still easy to type on a phone."),
    ],
    # 8 Spanish, bank complaint
    [
        ("user", """Hola, me han cobrado dos veces la misma compra con la tarjeta {card} (180,50 € en una tienda online). Quiero reclamar al banco. Me llamo {name} y la cuenta asociada es {iban}. ¿Me ayudas a redactar la reclamación?"""),
        ("assistant", """¡Claro! Aquí tienes un borrador:

Asunto: Reclamación por cargo duplicado

Estimados señores:

Me dirijo a ustedes como titular de la tarjeta {card}, vinculada a la cuenta {iban}.

El día [fecha] realicé una compra online por importe de 180,50 €, que aparece cargada dos veces en mi extracto. Solicito la anulación del cargo duplicado y el reembolso de dicho importe en la cuenta indicada.

Adjunto captura del extracto y el justificante de la compra.

Quedo a la espera de su respuesta.

Atentamente,
{name}

Consejo: si lo envías por correo electrónico, basta con poner los últimos cuatro dígitos de la tarjeta."""),
    ],
    # 9 English, docker compose YAML
    [
        ("user", """docker compose up gives `services.db.environment must be a mapping`. whats wrong

```yaml
services:
  db:
    image: postgres:16
    environment:
      - POSTGRES_USER: admin
      - POSTGRES_PASSWORD: {password}
  app:
    build: .
    environment:
      ADMIN_EMAIL: {email}
      DATABASE_URL: postgres://admin:{password}@db:5432/app
```"""),
        ("assistant", """You're mixing the two syntaxes under `db.environment`. Either use a list of `KEY=value` strings or a mapping, but not `- KEY: value`. As a mapping:

```yaml
services:
  db:
    image: postgres:16
    environment:
      POSTGRES_USER: admin
      POSTGRES_PASSWORD: {password}
  app:
    build: .
    environment:
      ADMIN_EMAIL: {email}
      DATABASE_URL: postgres://admin:{password}@db:5432/app
```

I'd also move the database password into a `.env` file that isn't committed, and reference it as `${{POSTGRES_PASSWORD}}` in the compose file. If it contains characters like `@` or `/`, remember to URL-encode it in `DATABASE_URL`."""),
    ],
    # 10 English, CSV to markdown table
    [
        ("user", """turn this into a markdown table pls

name,email,phone,city
{name},{email},{phone},{city}
{name2},,,{city}
{first3} (surname tbd),,,Leeds"""),
        ("assistant", """Here you go:

| Name | Email | Phone | City |
|---|---|---|---|
| {name} | {email} | {phone} | {city} |
| {name2} | – | – | {city} |
| {first3} (surname tbd) | – | – | Leeds |

I used a dash for the missing values so the columns stay readable. Want me to add a column for notes?"""),
    ],
    # 11 Polish, tax office letter
    [
        ("user", "cześć, potrzebuję napisać krótkie pismo do urzędu skarbowego że zmieniłem numer konta do zwrotu podatku. nowe konto: {iban}. nazywam się {name}, PESEL {id}. mieszkam {address}"),
        ("assistant", """Jasne, oto wzór:

{name}
{address}
PESEL: {id}

Naczelnik Urzędu Skarbowego
w [miejscowość]

Zawiadomienie o zmianie rachunku bankowego

Uprzejmie informuję, że zwrot nadpłaty podatku proszę przekazać na mój nowy rachunek bankowy:
{iban}

Poprzedni rachunek został zamknięty.

Z poważaniem
{name}

Uwaga: zmianę rachunku możesz też zgłosić elektronicznie przez e-Urząd Skarbowy albo na formularzu ZAP-3 – to zwykle szybsze niż pismo."""),
    ],
    # 12 Dutch, change of address, lower-case
    [
        ("user", "hoi! ik ben net verhuisd naar {address_lower} en moet dat doorgeven aan mijn zorgverzekeraar. kan je een kort mailtje schrijven? mijn naam is {name_lower} haha sorry voor de kleine letters"),
        ("assistant", """Geen probleem! Hier is een voorstel:

Onderwerp: Adreswijziging

Beste heer/mevrouw,

Graag geef ik mijn nieuwe adres door. Per [datum] woon ik op:

{street}
{post} {city}

Mijn polisnummer is [polisnummer].

Met vriendelijke groet,
{name}"""),
        ("user", "polisnummer is {id} trouwens"),
        ("assistant", "Top, dan wordt die regel: \"Mijn polisnummer is {id}.\" De rest kan zo blijven. Let op: als je in Nederland bent ingeschreven bij de gemeente, geven veel verzekeraars het nieuwe adres ook automatisch door, maar een mailtje schaadt niet."),
    ],
    # 13 Italian, note to neighbour
    [
        ("user", "ciao, devo scrivere un biglietto gentile alla vicina, la signora {name2}, perché il suo cane abbaia tutta la notte. voglio lasciarle il mio numero così ne parliamo: {phone}. ah, io mi chiamo {first}"),
        ("assistant", """Certo! Ecco una proposta:

Gentile Signora {name2},

mi scusi se la disturbo con questo biglietto. Sono {first}, abito nell'appartamento accanto. Negli ultimi tempi il suo cane abbaia spesso durante la notte e faccio un po' fatica a dormire.

Sono sicuro/a che non è facile da gestire, e mi piacerebbe parlarne con calma. Se le va, mi può chiamare o scrivere al {phone}.

Grazie mille e buona giornata,
{first}"""),
        ("user", "perfetto. alla fine metti solo 'cell. ' e il numero, senza la frase prima"),
        ("assistant", """Ecco la chiusura modificata:

Grazie mille e buona giornata,
{first}
cell. {phone}"""),
    ],
    # 14 Portuguese (BR), CV header
    [
        ("user", "Oi! Pode me ajudar a montar o cabeçalho do meu currículo? Nome: {name}, email {email}, cel {phone}, moro na {street}, {city} - CEP {post}. Quero algo moderno e simples"),
        ("assistant", """Claro! Uma opção limpa em markdown:

**{name}**
{city}, {country} · {phone} · {email}

---

Dica: hoje em dia não é mais comum colocar o endereço completo ({street}, CEP {post}) no currículo – cidade e estado já bastam, e você protege seus dados. Se quiser, inclua também o link do seu LinkedIn na mesma linha."""),
    ],
    # 15 Czech, parcel to old address
    [
        ("user", "Ahoj, objednal jsem si přes e-shop boty a platil kartou {card}, ale balík šel na starou adresu. Nová adresa je {address}. Jak mám napsat e-shopu? Jmenuju se {name}, tel. {phone}"),
        ("assistant", """Ahoj! Tady je návrh e-mailu:

Předmět: Doručení na špatnou adresu – objednávka č. [číslo]

Dobrý den,

dne [datum] jsem u vás objednal boty (objednávka č. [číslo]), platba proběhla kartou. Zásilka byla bohužel odeslána na mou starou adresu. Prosím o přesměrování na novou adresu:

{name}
{address}

V případě dotazů mě kontaktujte na tel. {phone}.

Děkuji,
{name}

Číslo karty do e-mailu nepiš – e-shop ho k vyřízení nepotřebuje, stačí číslo objednávky."""),
    ],
    # 16 Hungarian, rental contract
    [
        ("user", "Szia! Albérleti szerződést kell írnom. Bérbeadó: {name}, lakcím {address}, személyi igazolvány száma {id}. Bérlő: {name2}. A bérleti díjat erre a számlára kell utalni: {iban}. Tudnál egy egyszerű szerződésmintát adni?"),
        ("assistant", """Persze, itt egy egyszerű minta:

LAKÁSBÉRLETI SZERZŐDÉS

amely létrejött egyrészről
{name} (lakcím: {address}, szig. szám: {id}) mint bérbeadó,
másrészről
{name2} mint bérlő között az alábbi feltételekkel:

1. A bérlemény címe: [cím]
2. A bérleti díj [összeg] Ft/hó, amelyet a bérlő minden hónap 10. napjáig a bérbeadó {iban} számú bankszámlájára utal.
3. Kaució: [összeg] Ft, amelyet a bérbeadó a szerződés megszűnésekor visszafizet.
4. A szerződés határozatlan időre jön létre, [x] napos felmondási idővel.

[hely], [dátum]

______________
{name}
bérbeadó

______________
{name2}
bérlő

Megjegyzés: magyar szerződésben a neveket családnév–utónév sorrendben szokás írni, tehát {surname} {first}."""),
    ],
    # 17 Danish, school message
    [
        ("user", "Hej, kan du hjælpe mig med at skrive en besked på Aula til klasselæreren? Min søn {first3} er syg i dag og i morgen. Min mand {first2} kommer forbi og henter hans lektier. Jeg hedder {name}. Og forresten, jeg kan ikke logge ind på den gamle skoleportal, koden jeg brugte var {password} – kan man nulstille den?"),
        ("assistant", """Selvfølgelig! Her er et forslag:

Hej [lærerens navn]

{first3} er desværre syg i dag og i morgen. {first2} kommer forbi skolen og henter hans lektier, så han kan følge lidt med hjemmefra.

Venlig hilsen
{name}

Angående login: Aula bruger MitID, så den gamle kode virker ikke længere. Hvis du har problemer, kan skolens kontor hjælpe. Og del helst ikke dine koder med nogen – heller ikke her."""),
    ],
    # 18 English, emergency card as markdown
    [
        ("user", "going hiking in the dolomites with two friends next week. make me a little emergency info card in markdown i can print. me: {name}, {id_kind} {id}, phone {phone}. emergency contact is my sister {name2}, she's on {email}. we're staying at Rifugio Lagazuoi the first 2 nights"),
        ("assistant", """# Emergency Info – Dolomites Trip

| | |
|---|---|
| **Name** | {name} |
| **{id_kind}** | {id} |
| **Phone** | {phone} |
| **Emergency contact** | {name2} (sister) |
| **Contact email** | {email} |
| **Accommodation** | Rifugio Lagazuoi (nights 1–2) |

**Emergency numbers in Italy:** 112 (general), 118 (ambulance / mountain rescue)

Tip: print two copies, keep one in your pack and give one to {name2} together with your route plan."""),
    ],
    # 19 English, Slack export to action items
    [
        ("user", """can you turn this slack thread into action items

[09:14] {first_lower}: did anyone update the billing info for the madrid office?
[09:16] {name2}: yes, new company card is {card}, exp 09/27, I'll put it in 1password
[09:16] {name2}: actually pls dont copy that anywhere
[09:17] {first_lower}: lol too late its in this thread now
[09:20] {first3}: also the courier needs a phone number for tomorrow's delivery, use {phone}?
[09:21] {name2}: 👍"""),
        ("assistant", """**Action items**

1. **{name2}** – store the new company card ({card}, exp 09/27) in 1Password and delete the message from the Slack thread.
2. **{first3}** – give {phone} to the courier for tomorrow's delivery.
3. **{first}** – confirm the Madrid office billing details are updated everywhere they're needed.

You might also want to ask an admin to remove the card number from the channel history."""),
    ],
    # 20 English, support bot with system prompt
    [
        ("system", "You are Nora, the support assistant for Brightline Energy. Be concise and friendly. Never ask for or repeat full identity document numbers."),
        ("user", "hi its {first} again, my bill went up by like 40 quid?? account is under {email}. last time they asked for my {id_kind} to verify, its {id}"),
        ("assistant", "Hi {first}, thanks for getting back in touch. I've found the account linked to {email}. You don't need to share your {id_kind} here – I can verify you with your date of birth and the first line of your address instead. The increase is most likely due to the price cap change on 1 April plus an estimated reading. Would you like me to send you a breakdown?"),
        ("user", "ok whatever, yes send the breakdown to {email} and also to my partner {name2}"),
        ("assistant", "I'll send the breakdown to {email} now. For data protection reasons I can only send it to {name2} once they've been added as an authorised person on the account – you can do that in the app under Settings → Account access."),
    ],
    # 21 English, curl 401
    [
        ("user", """getting 401 from our internal api and i'm 100% sure the creds are right

```bash
#!/bin/bash
USER="{email}"
PASS='{password}'
curl -s -u $USER:$PASS https://api.internal.example.com/v2/reports \\
  -H "Accept: application/json" | jq .
```

same login works in the browser"""),
        ("assistant", """If the browser login works but curl doesn't, it's usually one of these:

1. **Unquoted variables.** `$USER:$PASS` is subject to word splitting and globbing. If `{password}` contains spaces, `*`, `?` or similar, curl receives something else. Quote it:

```bash
curl -s -u "$USER:$PASS" https://api.internal.example.com/v2/reports \\
  -H "Accept: application/json" | jq .
```

2. **`USER` is a reserved-ish variable.** Your shell already sets `$USER` to your login name; it's fine to overwrite it in a script, but renaming it to `API_USER` avoids surprises.
3. **The API doesn't use Basic auth.** The browser may be using a session cookie or SSO. Check in the browser dev tools (Network tab) which `Authorization` header is actually sent.

Try `curl -v` to see whether the `Authorization: Basic ...` header goes out at all."""),
    ],
    # 22 English, expense claim with possessive
    [
        ("user", "need to write up expenses from the berlin trip for finance. I paid the hotel (€612) on {first}'s card since mine got blocked – it was {card}. the taxis went on my own, reimbursement should go to {name2}, IBAN {iban}. can you draft the email to finance (cc:{name})"),
        ("assistant", """Subject: Expense claim – Berlin trip

Hi Finance team,

Please find my expenses from the Berlin trip below:

- Hotel: €612 – paid with {name}'s card ({card}), as my own card was blocked at the time. This amount should therefore be reimbursed to {first}.
- Taxis: €[amount] – paid with my own card.

Please transfer the taxi reimbursement to:
Name: {name2}
IBAN: {iban}

All receipts are attached.

Best regards,
{first2}

Cc: {name}

Note: finance normally only needs the last four digits of {first}'s card, so you may want to shorten the number before sending."""),
    ],
    # 23 English, lost line breaks in export
    [
        ("user", "exported our orders from the shop and the address column came out like this: {name}???{address_qq}   can you make it a proper label"),
        ("assistant", """The `???` marks are where the line breaks got lost during the export (usually an encoding problem with CR/LF characters). Here's the label:

```
{name}
{address_lines}
```

If you have lots of these in Excel, use Find & Replace: search for `???` and replace with a line break (Ctrl+J in the replace field)."""),
        ("user", "and in python for the whole csv?"),
        ("assistant", """Sure:

```python
import csv

with open("orders.csv", newline="", encoding="utf-8") as f:
    rows = list(csv.DictReader(f))

for r in rows:
    r["address"] = r["address"].replace("???", "\\n")

with open("orders_fixed.csv", "w", newline="", encoding="utf-8") as f:
    w = csv.DictWriter(f, fieldnames=rows[0].keys())
    w.writeheader()
    w.writerows(rows)
```

For the row above you'd then get `{name}` followed by {street}, {post} {city} and {country} on separate lines."""),
    ],
    # 24 English user, German message to translate
    [
        ("user", """can you translate this message from my german colleague? i only get half of it

"hey, kurze info: die neue miete fürs büro geht ab juni auf {iban} (kontoinhaber {name}). der zugang zum vermieterportal ist {email}, pw ist {password} – bitte nicht weitergeben!! bei fragen {first} anrufen: {phone}"

thanks!!"""),
        ("assistant", """Here's the translation:

"Hey, quick info: from June, the new office rent goes to {iban} (account holder {name}). The login for the landlord portal is {email}, the password is {password} – please don't pass it on!! If you have questions, call {first}: {phone}"

In short: update the standing order for the rent to the new account from June, and use those credentials for the landlord portal. It might be worth suggesting a password manager for sharing the login next time."""),
    ],
]


HELD_OUT_26_TEMPLATES: list[list[tuple[str, str]]] = [
    # 1 EN fire brigade on-call list -> csv
    [
        ("user", """can you turn this into a csv with columns name,role,phone? its the on-call list for the volunteer fire brigade next month

{name} - crew lead - {phone}
{name2}, driver (no mobile, use the station line)
{first3} new, trainee

login for the rota site is firecrew / {password} if you need to check anything"""),
        ("assistant", """Here you go:

```csv
name,role,phone
{name},crew lead,{phone}
{name2},driver,
{first3},trainee,
```

I left {first2}'s phone empty since they use the station line, and {first3} only has a first name in your list. I didn't need the rota login, so you may want to change {password} if this list gets shared around."""),
    ],
    # 2 DE gym cancellation
    [
        ("user", """Hallo, kannst du mir eine Kündigung für mein Fitnessstudio schreiben? Mein Name ist {name}, ich wohne in der {street}, {post} {city}. Mitgliedsnummer hab ich nicht mehr, aber die buchen jeden Monat per Lastschrift von {iban} ab. Bitte zum nächstmöglichen Termin."""),
        ("assistant", """Gerne, hier ein Entwurf:

{name}
{street}
{post} {city}

Betreff: Kündigung meiner Mitgliedschaft

Sehr geehrte Damen und Herren,

hiermit kündige ich meine Mitgliedschaft fristgerecht zum nächstmöglichen Zeitpunkt. Da mir meine Mitgliedsnummer nicht vorliegt, nenne ich zur Zuordnung die Bankverbindung, von der die Beiträge abgebucht werden: {iban}.

Bitte stellen Sie die Lastschriften nach Vertragsende ein und bestätigen Sie mir die Kündigung sowie das Enddatum schriftlich.

Mit freundlichen Grüßen
{name}

Tipp: Schick das Schreiben per Einschreiben, dann hast du einen Nachweis."""),
        ("user", """danke!! kannst du noch ergänzen dass sie mich unter {phone} erreichen können, falls was unklar ist"""),
        ("assistant", """Klar, füge vor der Grußformel einfach diesen Satz ein:

"Für Rückfragen erreichen Sie mich telefonisch unter {phone}."

Der Rest bleibt gleich, unterschrieben wird weiterhin mit {name}."""),
    ],
    # 3 EN pytest fixture dentist booking
    [
        ("user", """my test keeps failing with KeyError: 'email' and i cant see why

```python
import pytest

@pytest.fixture
def patient():
    return {{
        "full_name": "{name}",
        "mail": "{email}",
        "phone": "{phone}",
        "portal_pw": "{password}",
    }}

def test_reminder(patient):
    msg = build_reminder(patient)
    assert patient["email"] in msg.to
```"""),
        ("assistant", """The fixture stores the address under the key `"mail"`, but the test (and probably `build_reminder`) reads `patient["email"]`. Rename the key:

```python
@pytest.fixture
def patient():
    return {{
        "full_name": "{name}",
        "email": "{email}",
        "phone": "{phone}",
        "portal_pw": "{password}",
    }}
```

Unrelated, but if {name}'s details and `{password}` are copied from a real patient record, swap them for dummy values before you commit this."""),
    ],
    # 4 FR lost luggage in TGV
    [
        ("user", """bonjour, j'ai oublié ma valise dans le TGV Paris-Lyon hier soir. tu peux m'aider à écrire une déclaration d'objet perdu? je m'appelle {name}, mon adresse:
{address_lines}
tel {phone}, mail {email}. valise bleu marine, étiquette avec mon nom dessus. j'ai aussi mon {id_kind} si besoin : {id}"""),
        ("assistant", """Bien sûr ! Voici un texte que vous pouvez copier dans le formulaire en ligne ou envoyer par courriel :

Objet : Déclaration de perte – valise oubliée dans le TGV Paris–Lyon

Madame, Monsieur,

Je soussigné(e) {name}, demeurant {address}, {country}, déclare avoir oublié une valise dans le TGV Paris–Lyon d'hier soir.

Description : valise de couleur bleu marine, munie d'une étiquette à mon nom ({name}).

Vous pouvez me joindre au {phone} ou par courriel à {email}. Pour justifier de mon identité, je peux fournir mon {id_kind} ({id}).

Je vous remercie par avance de votre aide.

Cordialement,
{name}

Pensez à ajouter le numéro du train et votre voiture/place si vous les avez sur votre billet."""),
    ],
    # 5 EN forwarded wedding seating
    [
        ("user", """---------- Forwarded message ---------
From: {name} <{email}>
Subject: seating, final-ish

ok so table 3 is {first3}, mum and me. {name2} can't sit near {first3} (long story) so put {first2} wherever, maybe with the uni lot?

x

--
sorry for forwarding the whole thing lol, can you turn this into a seating table? {first}'s my sister, it's her wedding"""),
        ("assistant", """Of course! Based on {first}'s email:

| Table | Guests | Note |
|---|---|---|
| 3 | {first}, {first3}, Mum | as requested |
| 5 | {name2} + uni friends | kept away from {first3} |

I put {first2} on table 5 with the uni group since {first} suggested that; if you tell me how many tables there are and who else is coming, I can fill in the rest."""),
    ],
    # 6 ES van rental deposit
    [
        ("user", """oye, tengo que mandar la fianza para la furgoneta de la mudanza. el de la empresa me dijo: titular {name2}, IBAN {iban}, y en el concepto mi {id_kind} {id}. me redactas un whatsapp confirmando que ya hice la transferencia? yo soy {first}. o mejor le paso directamente la tarjeta {card} por teléfono??"""),
        ("assistant", """Claro, aquí tienes el mensaje:

«Hola, soy {first}. Te confirmo que acabo de hacer la transferencia de la fianza a la cuenta {iban}, a nombre de {name2}, con el concepto {id}. ¿Me avisas cuando te llegue? ¡Gracias!»

Sobre la tarjeta: yo no mandaría el número {card} por WhatsApp ni lo dictaría por teléfono si ya has hecho la transferencia. Con el justificante del banco es suficiente."""),
    ],
    # 7 EN SQL model railway club
    [
        ("user", """writing a seed script for our model railway club app. does this look right for postgres?

INSERT INTO members (full_name, email, card_on_file, joined)
VALUES ('{name}', '{email}', '{card}', '2023-04-01'),
       ('{name2}', NULL, NULL, '2024-01-15');"""),
        ("assistant", """The syntax is fine and will run on Postgres. Two notes:

1. Storing `'{card}'` as plain text in `card_on_file` is a PCI problem even in a small club app. Keep a token from your payment provider instead.
2. If a surname ever contains an apostrophe, hard-coded literals break; use parameters in the app code.

A safer seed would be:

```sql
INSERT INTO members (full_name, email, card_token, joined)
VALUES ('{name}', '{email}', 'tok_test_visa', '2023-04-01'),
       ('{name2}', NULL, NULL, '2024-01-15');
```"""),
    ],
    # 8 IT condominium minutes
    [
        ("user", """Ciao, mi aiuti a scrivere il verbale dell'assemblea di condominio di ieri sera? presenti: {name} (amministratore), {name2}, {first3} dell'interno 4 e altri sei. si è deciso di rifare il portone, la proposta di {first2} è passata all'unanimità. la rata straordinaria va versata entro il 30 sull'IBAN {iban}. il palazzo è in {street}, {city}"""),
        ("assistant", """Certo, ecco una bozza:

VERBALE DI ASSEMBLEA CONDOMINIALE

Condominio sito in {street}, {post} {city}

Il giorno ___ alle ore 21:00 si è riunita l'assemblea del condominio. Presiede l'amministratore {name}. Sono presenti i condomini {name2}, {first3} (int. 4) e altri sei condomini.

Punto 1 – Rifacimento del portone d'ingresso
La proposta presentata da {name2} viene approvata all'unanimità.

Punto 2 – Rata straordinaria
I condomini sono tenuti a versare la rata straordinaria entro il giorno 30 sul conto corrente condominiale IBAN {iban}.

Letto, approvato e sottoscritto.

L'amministratore
{name}

Ho aggiunto un campo per il CAP: se non è {post}, correggilo pure."""),
    ],
    # 9 PL lost wallet
    [
        ("user", """zgubiłem portfel, był w nim dowód i karta. jak to zgłosić? mam zapisany {id_kind}: {id}, a karta to {card}. nazywam się {name}"""),
        ("assistant", """Przykro mi, {first}. Najważniejsze kroki:

1. **Zastrzeż kartę** {card} od razu, w aplikacji banku albo przez infolinię.
2. **Zgłoś utratę dokumentu** ({id_kind}: {id}) w dowolnym urzędzie gminy albo przez mObywatel.
3. **Zastrzeż dokument w systemie Dokumenty Zastrzeżone**, żeby nikt nie wziął na Ciebie kredytu.
4. Jeśli podejrzewasz kradzież, zgłoś to też na policji."""),
        ("user", """ok a jak bank zapyta o numer kontaktowy to mam podać {phone} czy ten stary?"""),
        ("assistant", """Podaj ten, którego teraz używasz, czyli {phone}. Jeśli w banku jest jeszcze zapisany stary numer, poproś przy okazji o aktualizację danych na koncie {name}."""),
    ],
    # 10 EN grandma wifi card
    [
        ("user", """my grandma's at {address} and her new router is finally set up. i want to print a little card to stick on the fridge so visitors can get on the wifi. network is GRAN-{surname} and the key she picked is {password} lol. make it big and friendly?"""),
        ("assistant", """Here's a simple card you can print:

```
==================================
     WELCOME TO GRAN'S HOUSE!
==================================

   Wi-Fi:     GRAN-{surname}
   Key:       {password}

   {street}, {city}
==================================
```

Print it in a large font (24pt or more) on thick paper. If you'd rather not have {password} on display, most routers can print a QR code that guests just scan."""),
    ],
    # 11 NL yaml newsletter smtp
    [
        ("user", """hoi, onze tennisclub gebruikt dit yaml bestand voor de nieuwsbrief maar de smtp login werkt niet meer sinds vorige week. zie jij wat er mis is?

```yaml
smtp:
  host: smtp.ziggo.nl
  port: 587
  user: {email}
  pass: {password}
  tls: yes
sender:
  name: {name}
  reply_to: {email}
```"""),
        ("assistant", """Een paar dingen om te checken:

1. Op poort 587 hoort STARTTLS, niet directe TLS. Veel bibliotheken verwachten daarvoor een aparte optie.
2. Als het wachtwoord tekens als `#`, `:` of `%` bevat, leest YAML het anders dan je denkt. Zet waarden daarom tussen aanhalingstekens.

```yaml
smtp:
  host: smtp.ziggo.nl
  port: 587
  user: "{email}"
  pass: "{password}"
  starttls: true
sender:
  name: "{name}"
  reply_to: "{email}"
```

En zet het wachtwoord liever in een omgevingsvariabele dan in het bestand, zeker als {first} het bestand met andere bestuursleden deelt."""),
    ],
    # 12 EN pet insurance claim
    [
        ("user", """ok so the pet insurance claim form wants my policy thing and a card for the excess. policy is my {id_kind} apparently?? its {id}. card: {card} exp 09/27. can you fill the text bits for me, name {name}, reachable on {phone} most days after 5. the dog ate a sock, had to have surgery"""),
        ("assistant", """Sorry to hear about the sock! Here's what to put in each field:

- **Policyholder name:** {name}
- **{id_kind}:** {id}
- **Contact number:** {phone} (best after 5pm)
- **Payment card for excess:** {card}, expiry 09/27

**Description of incident:**
"My dog swallowed a sock, which caused an intestinal blockage. The vet carried out emergency surgery to remove it. Invoices and the clinical notes are attached."

Double-check that the form really wants the {id_kind} as the policy reference; sometimes it's a separate number printed on the policy schedule."""),
    ],
    # 13 PT-BR rent receipt
    [
        ("user", """preciso fazer um recibo de aluguel pro meu inquilino. locador: eu, {name}, {id_kind} {id}. inquilino: {name2}. imóvel na {street}, {city} - CEP {post}. valor R$ 1.800,00 referente a março"""),
        ("assistant", """Claro! Segue o modelo:

RECIBO DE ALUGUEL

Recebi de {name2} a quantia de R$ 1.800,00 (mil e oitocentos reais), referente ao aluguel do mês de março do imóvel situado na {street}, {city}, CEP {post}.

Para clareza, firmo o presente.

{city}, ___ de março de 2024.

______________________________
{name}
{id_kind}: {id}

Se quiser, posso montar uma versão com campos em branco para você reutilizar todo mês."""),
    ],
    # 14 CS insurance claim flooding
    [
        ("user", """Dobrý den, potřebuju napsat dopis pojišťovně, že mě vytopil soused odshora. Jsem {name}, bydlím {address}. Peníze za škodu chci poslat na účet {iban}. Soused se jmenuje {name2}, o všem ví."""),
        ("assistant", """Dobrý den, zde je návrh dopisu:

{name}
{address_lines}

Věc: Hlášení pojistné události – vytopení bytu

Vážení,

dne ___ došlo k vytopení mého bytu na adrese {address} z bytu nad námi, který užívá {name2}. Soused o události ví a je ochoten škodu potvrdit.

Poškozeny byly strop a stěny v koupelně a v chodbě. Fotodokumentaci přikládám.

Pojistné plnění prosím zašlete na účet {iban}.

S pozdravem
{name}

Doporučuji ještě přidat číslo pojistné smlouvy, pokud ho máte po ruce."""),
    ],
    # 15 HU apartment ad reply
    [
        ("user", """szia! írnál nekem egy rövid bemutatkozó üzenetet egy albérlet hirdetésre? {first} vagyok, 29, nem dohányzom, van egy macskám. a hirdető {name2}, az email címem {email}, telefonszám {phone}"""),
        ("assistant", """Persze! Íme egy javaslat:

Kedves {name2}!

{first} vagyok, 29 éves, nemdohányzó, és a hirdetése kapcsán írok. Egy nyugodt, szobatiszta macskám van; ha ez nem gond, nagyon szívesen megnézném a lakást a héten.

Telefonon a {phone} számon, e-mailben a {email} címen érhet el.

Köszönöm, és várom válaszát!
Üdvözlettel:
{name}"""),
    ],
    # 16 DA allotment association dues
    [
        ("user", """hej, jeg er kasserer i vores haveforening. kan du lave en pæn liste ud fra det her?

{name} - have 12 - {phone} - betalt
{name2} have 7, betalt
{first3} har ikke betalt endnu

og skriv en venlig påmindelse til {first3} om at kontingentet skal betales til {iban}. underskriv med mit navn, {first}"""),
        ("assistant", """Her er listen:

| Navn | Have | Telefon | Kontingent |
|---|---|---|---|
| {name} | 12 | {phone} | Betalt |
| {name2} | 7 |  | Betalt |
| {first3} |  |  | Ikke betalt |

Og påmindelsen:

Hej {first3}!

Dette er en venlig påmindelse om, at kontingentet for i år endnu ikke er registreret hos os. Beløbet kan indbetales til foreningens konto {iban}. Har du allerede betalt, så se bort fra denne besked.

Mange hilsner
{first}, kasserer"""),
    ],
    # 17 EN beekeepers swarm collectors (system)
    [
        ("system", """You are a helpful assistant for the Valley Beekeepers' Association website team."""),
        ("user", """can u make a markdown table of swarm collectors for the website? {name_lower}, {phone}, north side / {name2} - {email} - covers {city} and around. {first2} said email only pls"""),
        ("assistant", """Sure:

| Collector | Contact | Area |
|---|---|---|
| {name} | {phone} | North side |
| {name2} | {email} | {city} and surroundings |

I capitalised {first}'s name and listed only the email for {first2}, as requested. Before publishing, it's worth confirming {first} is happy to have {phone} on a public page."""),
    ],
    # 18 EN CRM export mangled addresses
    [
        ("user", """our old CRM export mangled the addresses, every line break became ??? . example row:

"{name}","{address_qq}","{email}"

how do I fix this in excel or python? there are like 4000 rows"""),
        ("assistant", """In Python with pandas:

```python
import pandas as pd

df = pd.read_csv("export.csv", header=None, names=["name", "address", "email"])
df["address"] = df["address"].str.replace("???", "\\n", regex=False)
df.to_csv("export_fixed.csv", index=False)
```

For your example row ({name}), the address then becomes:

```
{address_lines}
```

In Excel, use a helper column with `=SUBSTITUTE(B2,"???",CHAR(10))` and turn on Wrap Text. Both approaches keep `{email}` and the name column untouched."""),
    ],
    # 19 EN payment sandbox json
    [
        ("user", """getting 400 invalid_request from the payment sandbox, here's the body i'm sending:

{{
  "customer": {{"name": "{name}", "email": "{email}"}},
  "card": {{"number": "{card}", "exp": "12/26", "cvc": 123}}
}}"""),
        ("assistant", """Most payment APIs expect the expiry as separate integer fields and the CVC as a string (a leading zero would otherwise be lost). Try:

```json
{{
  "customer": {{ "name": "{name}", "email": "{email}" }},
  "card": {{
    "number": "{card}",
    "exp_month": 12,
    "exp_year": 2026,
    "cvc": "123"
  }}
}}
```

Also strip spaces or dashes from the number. And if `{card}` is a real card rather than one of the sandbox test numbers, don't send it to the sandbox at all."""),
    ],
    # 20 EN email signature -> vcard
    [
        ("user", """can you turn this signature into a vcard so i can import it on my phone

Best,
{name}
Senior Surveyor | Harbour & Lane
M: {phone}
{email}
{address}"""),
        ("assistant", """Here it is. Save it as `contact.vcf` and open it on your phone:

```
BEGIN:VCARD
VERSION:3.0
N:{surname};{first};;;
FN:{name}
TITLE:Senior Surveyor
ORG:Harbour & Lane
TEL;TYPE=CELL:{phone}
EMAIL;TYPE=WORK:{email}
ADR;TYPE=WORK:;;{street};{city};;{post};{country}
END:VCARD
```

The signature didn't name a country, so I assumed {country}; change it if {first} works elsewhere."""),
    ],
    # 21 DE restic backup script
    [
        ("user", """mein backup-skript bricht ab mit "auth failed". das passwort hat ein ! drin, liegt es daran?

```bash
#!/bin/bash
export RESTIC_PASSWORD="{password}"
restic -r sftp:{first_lower}@nas.local:/backup backup /home/{first_lower}
echo "fertig" | mail -s "backup ok" {email}
```"""),
        ("assistant", """Gut möglich. In doppelten Anführungszeichen kann `!` in einer interaktiven Shell History-Expansion auslösen, und `$` oder Backticks werden immer ausgewertet. Einfache Anführungszeichen sind sicherer:

```bash
#!/bin/bash
export RESTIC_PASSWORD='{password}'
restic -r "sftp:{first_lower}@nas.local:/backup" backup "${{HOME}}"
echo "fertig" | mail -s "backup ok" {email}
```

Noch besser ist eine Datei mit Rechten 600 und `--password-file ~/.restic-pass`, dann steht das Passwort gar nicht erst im Skript."""),
    ],
    # 22 EN garbled dictation to plumber
    [
        ("user", """I dictated this into my phone and it came out garbled, can you clean it up into a proper text to the plumber?

'hi its {first_lower} from {address_lower} my number is {phone} thats a mobile the boiler is leaking again can you come thursday my partner {first2} will be in from 9'"""),
        ("assistant", """Here's a tidied version:

"Hi, it's {first} from {address}. The boiler is leaking again. Could you come round on Thursday? My partner {first2} will be in from 9am. My mobile is {phone}. Thanks!"

Feel free to add the make of the boiler if you know it, so he brings the right parts."""),
    ],
    # 23 FR school trip carpool
    [
        ("user", """salut, pour la sortie scolaire de jeudi j'organise le covoiturage. peux-tu me faire un message pour le groupe des parents avec:
- {name}, 3 places, départ devant l'école 8h, {phone}
- {name2}, 2 places
- {first3} cherche une place pour son fils

et rappelle que le tableau est sur le drive de l'APE, le code c'est {password} (même que l'an dernier)"""),
        ("assistant", """Voici une proposition :

Bonjour à tous,

Pour la sortie de jeudi, voici l'organisation du covoiturage :

- **{name}** : 3 places, départ devant l'école à 8h. Contact : {phone}
- **{name2}** : 2 places
- **{first3}** cherche encore une place pour son fils, merci de vous signaler si vous pouvez l'emmener !

Le tableau complet est sur le drive de l'APE (code : {password}, le même que l'an dernier). Merci d'y inscrire vos enfants avant mercredi soir.

Bonne journée !

Petite remarque : si le groupe est grand, tu pourrais envoyer le code du drive en message privé plutôt que dans le groupe."""),
    ],
    # 24 EN genealogy (system)
    [
        ("system", """You are a genealogy research assistant. Be concise and practical."""),
        ("user", """researching my family tree. my great-grandfather was {name}, born in {city}, {country} around 1890. his daughter married {name2} in the 1920s. what records should i look for? also {surname}'s spelling changes a lot in old registers which is driving me mad"""),
        ("assistant", """For {name}, I'd start with:

1. **Civil birth registers** for {city}, roughly 1885 to 1895. Many archives in {country} have digitised these.
2. **Parish baptism records**, in case civil registration was patchy at the time.
3. **The marriage record** of his daughter and {name2}. It usually names both fathers, which confirms the link back to {first}.
4. **Census or population registers** that list the household together.

On spelling: search for {surname} with wildcards and phonetic variants, and note every version you find along with its source. Clerks often wrote names the way they heard them."""),
    ],
]


HELD_OUT_27_TEMPLATES: list[list[tuple[str, str]]] = [
    # 1 travel booking, passport details
    [
        ("user", "hey can you help me fill in the online check-in for my flight to lisbon, it keeps timing out. details: {name}, passport number {id}, mobile {phone}, email {email}. i just need to know which field is which, the form is in portuguese"),
        ("assistant", "Sure! Here's how the fields map:\n\n- **Nome / Apelido**: {first} / {surname}\n- **Número do documento**: {id} (select \"Passaporte\" as document type)\n- **Telemóvel**: {phone}\n- **E-mail**: {email}\n\nIf it times out again, try filling in the passport section first, that part usually has the strictest session limit."),
        ("user", "perfect thx. also my partner {name2} is on the same booking, does she need to do it separately?"),
        ("assistant", "Usually not. On most airlines the lead passenger ({name}) can check in everyone on the booking, but {first2} will need her own passport details entered in the second passenger block."),
        ("user", "ok and the extra bag, it says pay now, is it safe to put my card in there? {card} exp 09/27"),
        ("assistant", "Paying on the airline's own site is fine as long as the address bar shows their domain and a padlock. You don't need to share the card number ({card}) with me, though; just enter it directly in the payment form."),
    ],
    # 2 rental deposit, German letter
    [
        ("user", "Kannst du mir einen kurzen Brief an meinen Vermieter schreiben? Ich bin ausgezogen und warte seit 4 Monaten auf meine Kaution. Mein Name: {name}, neue Adresse:\n{address_lines}\nKonto für die Rückzahlung: {iban}"),
        ("assistant", "Gerne, hier ein Entwurf:\n\n{name}\n{address_lines}\n\nBetreff: Rückzahlung der Mietkaution\n\nSehr geehrte Damen und Herren,\n\nich habe die Wohnung vor vier Monaten ordnungsgemäß übergeben. Bis heute ist meine Kaution nicht zurückgezahlt worden. Ich bitte Sie, den Betrag innerhalb von 14 Tagen auf folgendes Konto zu überweisen:\n\nIBAN: {iban}\nKontoinhaber: {name}\n\nMit freundlichen Grüßen\n{name}"),
        ("user", "super, kannst du noch reinschreiben dass man mich unter {phone} erreicht"),
        ("assistant", "Klar, füge vor dem Gruß einfach diesen Satz ein:\n\n\"Für Rückfragen erreichen Sie mich telefonisch unter {phone}.\""),
    ],
    # 3 moving, address change list from export
    [
        ("user", "I copied my old address out of the council portal and it came out like this: {address_qq}\ncan you clean it up into normal lines? I need it for the redirect form"),
        ("assistant", "Here it is on separate lines:\n\n{address_lines}\n\nFor a mail redirect form you'll usually enter the street line, then the postcode ({post}) and town ({city}) in separate boxes."),
        ("user", "great. and the new place is {street} in {city} too, same postcode. who else should i tell? the bank, the dentist, work..."),
        ("assistant", "A quick checklist for moving to {street}, {post} {city}:\n\n1. Bank and card provider\n2. Employer / payroll\n3. GP and dentist\n4. Electoral register\n5. Car insurance and driving licence\n6. Any subscriptions that deliver by post\n\nIf you want I can draft a short template email you can send to all of them."),
    ],
    # 4 kids club, Polish
    [
        ("user", "czesc, musze zapisac corke na zajecia plywania, moglbys napisac maila do klubu? corka ma na imie {first3}, 8 lat. ja jestem {name}, tel {phone}, mail {email}"),
        ("assistant", "Jasne, proszę:\n\nTemat: Zapis na zajęcia pływania, {first3} (8 lat)\n\nDzień dobry,\n\nchciałbym/chciałabym zapisać moją córkę {first3} na zajęcia pływania dla dzieci w wieku 8 lat. Proszę o informację o wolnych miejscach, godzinach zajęć i opłatach.\n\nKontakt: {phone}, {email}\n\nPozdrawiam serdecznie,\n{name}"),
        ("user", "dzieki!! a drugi rodzic to {name2}, dopisz go jako kontakt awaryjny"),
        ("assistant", "Dopisz po prostu pod kontaktem:\n\n\"Kontakt awaryjny: {name2} (tata {first3})\"."),
    ],
    # 5 doctor's appointment, French
    [
        ("user", "Bonjour, je dois prendre rendez-vous chez un dermatologue pour mon fils. Tu peux m'aider à rédiger le message pour le secrétariat ? Je suis {name}, numéro de sécu / {id_kind} : {id}, joignable au {phone}."),
        ("assistant", "Bien sûr, voici une proposition :\n\nBonjour,\n\nJe souhaiterais prendre rendez-vous avec le Dr pour mon fils, {first3}, pour une consultation de dermatologie. Nous sommes disponibles les mardis et jeudis après 16h.\n\nNom du parent : {name}\n{id_kind} : {id}\nTéléphone : {phone}\n\nMerci d'avance,\nCordialement,\n{name}"),
        ("user", "merci ! c'est mieux d'envoyer par mail ou d'appeler ?"),
        ("assistant", "Pour un dermatologue, appeler est souvent plus rapide, mais si le cabinet propose une adresse mail, envoyer ce message permet d'avoir une trace écrite. Vous pouvez aussi mentionner que vous êtes joignable au {phone} en fin de journée."),
    ],
    # 6 small business invoice, markdown table
    [
        ("user", "I'm a freelance photographer, can you make me an invoice in markdown? client is {name2}, I'm {name}, my address {address}, email {email}, bank {iban}. 3 hrs shoot at 90/hr + 45 travel"),
        ("assistant", "**INVOICE #2024-017**\n\n**From:** {name}\n{address}\n{email}\n\n**Bill to:** {name2}\n\n| Item | Qty | Rate | Amount |\n|---|---|---|---|\n| Photo shoot | 3 h | 90.00 | 270.00 |\n| Travel | 1 | 45.00 | 45.00 |\n| **Total** | | | **315.00** |\n\n**Payment:** bank transfer within 14 days to\nIBAN {iban}\nAccount holder: {name}\n\nThank you for your business!"),
        ("user", "can u add 'payment ref: INV-017 {surname}' under the iban"),
        ("assistant", "Done, the payment block now reads:\n\nIBAN {iban}\nAccount holder: {name}\nPayment ref: INV-017 {surname}"),
    ],
    # 7 group chat organising event, Slack-like
    [
        ("user", "ok i'm pasting the thread from our group chat, can you summarise who's bringing what to the bbq on saturday?\n\n{first}: i'll do burgers and the grill\n{first2}: salads! and i can pick up {first3} from the station\n{first3}: thx {first2}!! i'll bring drinks\n{first}: address is {address} btw, ring the bell marked {surname}\n{first2}: if anyone gets lost call me {phone}"),
        ("assistant", "Here's the summary for Saturday's BBQ at {address}:\n\n- **{first}**: burgers + grill (host, bell marked \"{surname}\")\n- **{first2}**: salads, picking {first3} up from the station\n- **{first3}**: drinks\n\nIf anyone gets lost, {first2} can be reached at {phone}."),
    ],
    # 8 Python code with customer record
    [
        ("user", "why does this throw KeyError?\n\n```python\ncustomer = {{\n    \"name\": \"{name}\",\n    \"email\": \"{email}\",\n    \"card\": \"{card}\",\n}}\nprint(customer[\"Name\"])\n```"),
        ("assistant", "Dictionary keys in Python are case-sensitive. You defined the key as `\"name\"` but you're reading `\"Name\"`. Use:\n\n```python\nprint(customer[\"name\"])  # -> {name}\n```\n\nAlso, a side note: avoid keeping a full card number like `{card}` in plain source code. Store a token or only the last four digits instead."),
        ("user", "yeah its just test data lol, it's my own card. thanks"),
    ],
    # 9 SQL insert
    [
        ("user", "my insert fails with 'column count doesn't match value count':\n\nINSERT INTO members (full_name, email, phone, pwd)\nVALUES ('{name}', '{email}', '{phone}');"),
        ("assistant", "You listed four columns but only supplied three values; `pwd` has no value. Either drop the column or add a value:\n\n```sql\nINSERT INTO members (full_name, email, phone, pwd)\nVALUES ('{name}', '{email}', '{phone}', '<hashed password>');\n```\n\nAnd please store a hash there, not the raw password."),
        ("user", "ok so if her password is {password} i should run it through bcrypt first and insert the result?"),
        ("assistant", "Exactly. Hash `{password}` with bcrypt (or argon2) in your application code and insert only the resulting hash string. Never write the plain value into the table or the logs."),
    ],
    # 10 YAML config with SMTP creds
    [
        ("system", "You are a helpful DevOps assistant."),
        ("user", "my app won't send emails, here's the config:\n\n```yaml\nsmtp:\n  host: smtp.gmail.com\n  port: 465\n  user: {email}\n  pass: {password}\n  from_name: \"{name}\"\n  tls: false\n```"),
        ("assistant", "Port 465 requires implicit TLS, so `tls: false` will make the handshake fail. Try:\n\n```yaml\nsmtp:\n  host: smtp.gmail.com\n  port: 465\n  user: {email}\n  pass: {password}\n  from_name: \"{name}\"\n  tls: true\n```\n\nAlso, Gmail won't accept your normal account password here; you need an app password. Since you've pasted `{password}` in this chat, I'd recommend changing it."),
    ],
    # 11 JSON delivery payload
    [
        ("user", "the courier API rejects this json, what's wrong?\n\n{{\n  \"recipient\": \"{name}\",\n  \"street\": \"{street}\",\n  \"postcode\": {post},\n  \"city\": \"{city}\",\n  \"country\": \"{country}\",\n  \"phone\": \"{phone}\",\n}}"),
        ("assistant", "Two issues:\n\n1. Trailing comma after the last field is not valid JSON.\n2. `postcode` should be a string, since postcodes can have letters or leading zeros.\n\nFixed:\n\n```json\n{{\n  \"recipient\": \"{name}\",\n  \"street\": \"{street}\",\n  \"postcode\": \"{post}\",\n  \"city\": \"{city}\",\n  \"country\": \"{country}\",\n  \"phone\": \"{phone}\"\n}}\n```"),
    ],
    # 12 CSV guest list for wedding
    [
        ("user", "can you turn this into a csv for the caterer? name, dietary, contact\n- {name}, vegetarian, {email}\n- {name2}, no nuts, {phone}\n- {first3} (plus one of {first2}), none, same as {first2}"),
        ("assistant", "```csv\nname,dietary,contact\n\"{name}\",vegetarian,{email}\n\"{name2}\",no nuts,{phone}\n\"{first3}\",none,{phone}\n```\n\nI used {first2}'s number for {first3} since you said \"same as {first2}\". Add {first3}'s surname if the caterer needs full names."),
    ],
    # 13 shell with password in curl
    [
        ("user", "curl -u {email}:{password} https://api.example-invoices.com/v2/clients gives me 401, but i can log in in the browser fine with the same stuff"),
        ("assistant", "A 401 with the same credentials usually means one of these:\n\n1. The API needs an API token rather than your login password.\n2. Special characters in the password are being interpreted by the shell. Quote it:\n\n```sh\ncurl -u '{email}:{password}' https://api.example-invoices.com/v2/clients\n```\n\n3. Two-factor authentication is enabled, which blocks basic auth.\n\nCheck the account settings for an \"API key\" section. And since the password is now in your shell history, consider rotating it."),
    ],
    # 14 Spanish travel, hotel card problem
    [
        ("user", "hola! el hotel en sevilla me dice que mi tarjeta fue rechazada pero el banco dice que todo bien. la reserva esta a nombre de {name}, tarjeta {card}. que les escribo?"),
        ("assistant", "Puedes enviarles algo así:\n\nEstimados señores:\n\nLes escribo en relación con la reserva a nombre de {name}. Me indican que el pago con la tarjeta terminada en los últimos cuatro dígitos de {card} ha sido rechazado, pero mi banco confirma que no hay ningún bloqueo. ¿Podrían intentar el cobro de nuevo o enviarme un enlace de pago?\n\nPueden contactarme en {email} o en el {phone}.\n\nUn saludo,\n{name}\n\nTe recomiendo no enviar el número completo de la tarjeta por correo."),
        ("user", "vale, mi correo es {email} y tel {phone}, lo dejo asi. gracias!!"),
    ],
    # 15 Italian doctor, codice fiscale
    [
        ("user", "ciao, devo prenotare una visita per mia madre, {name}, ma il CUP online mi chiede il {id_kind} e non lo trovo sulla tessera vecchia. è questo? {id}"),
        ("assistant", "Se sulla tessera sanitaria compare una stringa di 16 caratteri alfanumerici, quello è il codice. Il valore che hai scritto ({id}) va inserito esattamente così, senza spazi, nel campo \"{id_kind}\" del CUP, insieme al nome e cognome di {name}."),
        ("user", "ok fatto, mi chiede anche un numero di telefono per l'sms di conferma, metto il mio {phone}?"),
        ("assistant", "Sì, va benissimo mettere il tuo ({phone}): l'SMS con data e ora della visita di {first} arriverà a te."),
    ],
    # 16 Dutch rental, landlord, deposit IBAN
    [
        ("user", "ik huur een kamer van {name2} en zij vraagt de borg over te maken, maar ze stuurde het IBAN via whatsapp. is dit normaal? \"hoi! borg graag naar {iban} t.n.v. {name2}, adres kamer is {address}\""),
        ("assistant", "Het is niet ongewoon dat particuliere verhuurders via WhatsApp communiceren, maar wees voorzichtig:\n\n- Controleer of de naam bij IBAN {iban} echt overeenkomt met {name2} (veel banken tonen een naamcheck bij het overmaken).\n- Vraag een getekend huurcontract voor {address} voordat je betaalt.\n- Betaal nooit voordat je de kamer hebt gezien.\n\nAls de naamcheck iets anders geeft dan {name2}, maak dan niets over."),
        ("user", "naamcheck zegt 'naam komt overeen'. pfoe"),
    ],
    # 17 Czech forwarded email with signature
    [
        ("user", "přeložíš mi tohle do angličtiny? potřebuju to přeposlat kolegovi\n\n---------- Přeposlaná zpráva ---------\nOd: {name} <{email}>\nPředmět: Faktura za březen\n\nDobrý den,\nv příloze posílám fakturu za březen. Platbu prosím zašlete na účet {iban}.\n\nS pozdravem\n{name}\n{street}, {post} {city}\ntel.: {phone}"),
        ("assistant", "---------- Forwarded message ---------\nFrom: {name} <{email}>\nSubject: Invoice for March\n\nHello,\nplease find attached the invoice for March. Please send the payment to account {iban}.\n\nKind regards,\n{name}\n{street}, {post} {city}\nphone: {phone}"),
    ],
    # 18 Hungarian school trip
    [
        ("user", "szia! az osztálykirándulásra kell egy beleegyező nyilatkozat, segítesz megfogalmazni? a gyerek {first3}, én {name} vagyok, lakcím {address}, telefon {phone}"),
        ("assistant", "Természetesen, íme egy javaslat:\n\nSZÜLŐI BELEEGYEZŐ NYILATKOZAT\n\nAlulírott {name} (lakcím: {address}) hozzájárulok, hogy gyermekem, {first3}, részt vegyen az osztálykiránduláson.\n\nSürgős esetben elérhetőségem: {phone}\n\nKelt: ..................\n\n.............................\n{name}"),
        ("user", "köszi! a {id_kind} is kell szerintem, {id}"),
        ("assistant", "Akkor egészítsd ki a lakcím után így: \"{id_kind}: {id}\". Ha az iskola nem kéri kifejezetten, nyugodtan kihagyhatod."),
    ],
    # 19 Danish moving, utilities
    [
        ("user", "hej, jeg flytter til {city} næste måned. kan du skrive en mail til elselskabet om at flytte mit abonnement? jeg hedder {name}, ny adresse {street}, {post} {city}, kundenummer ({id_kind}) {id}"),
        ("assistant", "Selvfølgelig:\n\nEmne: Flytning af elabonnement, {id_kind} {id}\n\nHej,\n\nJeg flytter den 1. i næste måned og vil gerne have mit elabonnement flyttet til min nye adresse:\n\n{street}\n{post} {city}\n\n{id_kind}: {id}\n\nSig endelig til, hvis I har brug for yderligere oplysninger.\n\nVenlig hilsen\n{name}"),
        ("user", "perfekt, skriv lige at de kan ringe på {phone}"),
        ("assistant", "Tilføj før hilsenen: \"I kan træffe mig på {phone}.\""),
    ],
    # 20 Portuguese small business, boleto / PIX
    [
        ("user", "oi, tenho uma lojinha de bolos e quero mandar uma mensagem padrão de cobrança pros clientes. meus dados: {name}, email {email}, conta {iban}. pode ser bem simpático"),
        ("assistant", "Claro! Que tal assim:\n\nOi, tudo bem? 😊\n\nMuito obrigada pela encomenda! Para finalizar, o pagamento pode ser feito por transferência para:\n\nTitular: {name}\nConta: {iban}\n\nDepois é só mandar o comprovante para {email} ou aqui mesmo.\n\nUm beijo e bom apetite!\n{first}"),
        ("user", "ameiii. a cliente {name2} pagou duas vezes sem querer, como escrevo pra devolver?"),
        ("assistant", "Oi, {first2}! Vi aqui que o pagamento da sua encomenda caiu duas vezes. Já estou devolvendo o valor duplicado para a mesma conta, deve aparecer em até 1 dia útil. Obrigada pela paciência! {first}"),
    ],
    # 21 phone dictated in words and digits
    [
        ("user", "transcribe this voicemail properly pls, the auto transcript is a mess: \"hi this is {first} {surname} calling about the flat viewing, you can call me back on, um, {phone}, that's {phone}, or email me, it's {email}, thanks bye\""),
        ("assistant", "Here's a cleaned-up version:\n\n\"Hi, this is {name} calling about the flat viewing. You can call me back on {phone}, or email me at {email}. Thanks, bye.\"\n\nShe repeats the number twice, so {phone} should be reliable."),
        ("user", "cool, can you save her as a contact line? like name | phone | email"),
        ("assistant", "{name} | {phone} | {email}"),
    ],
    # 22 password phrasings, holiday rental
    [
        ("user", "we're renting our place out on airbnb for the summer, can you write a welcome note for guests? wifi network is {surname}_home and the code is {password}. key box by the door, combo 4471. host contact: {name}, {phone}"),
        ("assistant", "Welcome to our home! 🏡\n\nWe hope you have a lovely stay. A few things you'll need:\n\n**Wi-Fi**\nNetwork: {surname}_home\nKey: {password}\n\n**Keys**\nThe key box is next to the front door, combination 4471.\n\n**Need anything?**\nCall or text {first} at {phone}, day or night for emergencies.\n\nEnjoy,\n{name}"),
        ("user", "nice. can you also put the address at the top for taxis: {address_lines}"),
        ("assistant", "Sure, add this block at the very top:\n\n**Address (for taxis and deliveries)**\n{address_lines}"),
    ],
    # 23 system prompt + support chat
    [
        ("system", "You are a customer support assistant for a train ticket booking service. Be concise."),
        ("user", "I booked tickets for me and my kid but the confirmation shows the wrong name, it says {name_lower} instead of the kid's name {first3} {surname}. booking email {email}"),
        ("assistant", "Sorry about that! I can help you request a name change. Please confirm:\n\n1. Lead passenger: {name}\n2. Passenger to correct: {first3} {surname}\n3. Booking email: {email}\n\nName corrections are free if submitted at least 24 hours before departure."),
        ("user", "yes thats right. I paid with {card} if you need it"),
        ("assistant", "Thanks, I don't need the card number for a name change, and please don't share full card numbers in chat. Your request for {first3} {surname} has been submitted; you'll get an updated confirmation at {email}."),
    ],
    # 24 possessive names, reference letter, lowercase address
    [
        ("user", "need a quick reference letter for our old tenant. {name}'s been renting from us for 3 yrs at {address_lower}, always paid on time. I'm {name2}. keep it short"),
        ("assistant", "To whom it may concern,\n\nI am writing to confirm that {name} rented a property from me at {address} for three years. During that time, {first} always paid the rent in full and on time, kept the property in excellent condition and was a considerate neighbour.\n\nI would have no hesitation in recommending {first} as a tenant.\n\nKind regards,\n{name2}"),
        ("user", "add my email {email} and number so the new landlord can check. number is {phone}"),
        ("assistant", "Add this under your name:\n\n{name2}\nEmail: {email}\nPhone: {phone}"),
    ],
]


HELD_OUT_28_TEMPLATES: list[list[tuple[str, str]]] = [
    # 1 HR payroll bank change
    [
        ("user", """hi, quick payroll question. one of our warehouse staff, {name}, moved house and changed banks last month. new details she sent me:

{address_lines}

IBAN {iban}

do I need anything else from her before I update it in the payroll system? we run payroll on the 25th"""),
        ("assistant", """Before you update {name}'s record, it's worth getting the change confirmed in writing (a signed bank change form or an email from her work account) so you have an audit trail. Then update:

- Home address: {address}
- IBAN: {iban}

If the 25th is close, check your provider's cut-off for bank changes; many need the new account 3-5 working days ahead, otherwise the payment goes to the old account and has to be recalled."""),
        ("user", "ok thanks. her old account is closed already so I guess I should ping {first} today"),
    ],
    # 2 CRM CSV cleanup
    [
        ("user", """Can you clean this CRM export? The address column lost its line breaks somewhere along the way.

id,full_name,email,phone,address
1041,{name},{email},{phone},"{address_qq}"
1042,{name2},,n/a,"unknown"

I want the address split into street / postcode / city / country columns."""),
        ("assistant", """Here's the cleaned version with the address split out:

id,full_name,email,phone,street,postcode,city,country
1041,{name},{email},{phone},{street},{post},{city},{country}
1042,{name2},,,,,,

For row 1042 I blanked the phone ("n/a") and address ("unknown") rather than keeping placeholder text, so filters for empty values will catch it. If you have many rows, a formula or a short script splitting on "???" does the same thing."""),
    ],
    # 3 German payroll
    [
        ("user", """Hallo, ich mache die Lohnabrechnung für unser kleines Büro. Neue Mitarbeiterin ab 1. des Monats: {name}, wohnhaft {street} in {post} {city}. Steuer-ID hab ich schon ({id}), Bankverbindung: {iban}. Was fehlt mir noch für die Anmeldung bei der Krankenkasse?"""),
        ("assistant", """Für die Anmeldung von Frau {surname} brauchst du zusätzlich:

1. Sozialversicherungsnummer (steht auf dem SV-Ausweis oder kommt von der Rentenversicherung)
2. Name der gewählten Krankenkasse und ggf. Mitgliedsbescheinigung
3. Geburtsdatum und Geburtsort, falls noch keine SV-Nummer vorhanden ist
4. Angaben zu Steuerklasse und Konfession (über ELStAM mit der Steuer-ID {id} abrufbar)

Die Adresse ({address}) und die IBAN hast du ja schon. Die Anmeldung muss mit der ersten Entgeltabrechnung, spätestens innerhalb von sechs Wochen nach Beschäftigungsbeginn, erfolgen."""),
        ("user", "super, danke! die SV-Nummer schickt sie mir morgen"),
    ],
    # 4 IT helpdesk ticket
    [
        ("user", """Ticket from a user, can you help me write a reply?

"hi its {first} from accounts, i got locked out after the update. i tried my usual one {password} like 5 times and now it says account disabled. my email is {email} if you need it. pls fix asap i have month end"

we can't reset passwords over email by policy."""),
        ("assistant", """Here's a draft:

Hi {first},

Thanks for reaching out, and sorry about the lockout during month end. For security reasons we can't reset passwords by email, and please don't send your password in tickets; since it's now been shared here, we'll force a new one at reset anyway.

To get you back in quickly:
1. Call the service desk or stop by IT and we'll verify your identity and unlock the account.
2. You'll set a new password at first login; the old one will no longer work.

We've noted {email} on the ticket so you'll get updates there.

Best,
IT Service Desk"""),
    ],
    # 5 customer support refund, with system turn
    [
        ("system", "You are a support assistant for an online furniture shop. Be polite and concise."),
        ("user", """Customer {name} writes: "I was charged twice for order 55812, both on my card ending in the last digits of {card}. Full number is {card} if that helps. Please refund one of them to the same card. You can reach me at {email} or {phone}." Draft a reply."""),
        ("assistant", """Dear {name},

Thank you for letting us know, and I'm sorry about the double charge on order 55812. I've confirmed the duplicate payment and requested a refund of the second charge to the original card. It normally shows up within 5-10 working days, depending on your bank.

For your security, please don't send full card numbers by email; we never need them to process a refund.

If you have any questions, reply to this email and we'll be in touch at {email}.

Kind regards,
Customer Care"""),
    ],
    # 6 French freelancer contract
    [
        ("user", """Bonjour, je suis freelance et je dois envoyer un contrat de prestation à un client. Tu peux me faire un bloc "Parties" propre ? Moi : {name}, {address}, {country}. Mon numéro de {id_kind} : {id}. Paiement par virement sur {iban}. Client : {name2}."""),
        ("assistant", """Voici une proposition :

**ENTRE LES SOUSSIGNÉS**

{name}, demeurant {street}, {post} {city}, {country}, {id_kind} : {id},
ci-après dénommé(e) « le Prestataire »,

ET

{name2},
ci-après dénommé(e) « le Client ».

**Article 6 - Modalités de paiement**
Les factures sont payables à 30 jours par virement bancaire sur le compte IBAN {iban}, au nom de {name}.

Pense à ajouter l'adresse du client et, s'il s'agit d'une société, son numéro d'immatriculation."""),
        ("user", "parfait merci, {first2} m'a demandé le contrat pour demain"),
    ],
    # 7 SQL migration bug
    [
        ("user", """Migration script is failing on this row and I can't see why:

INSERT INTO customers (full_name, email, phone, city, postcode)
VALUES ('{name}', '{email}', '{phone}', '{city}', '{post}');

ERROR: value too long for type character varying(20)

the other 3k rows went through fine"""),
        ("assistant", """One of the values is longer than 20 characters, and the likeliest culprit is the phone column: '{phone}' includes formatting (spaces, brackets, a country prefix) that the other rows may not have. Check the column lengths:

SELECT column_name, character_maximum_length
FROM information_schema.columns
WHERE table_name = 'customers';

Then either widen the column:

ALTER TABLE customers ALTER COLUMN phone TYPE varchar(32);

or normalise phone numbers before inserting. If the name is the problem, '{name}' with accents can also be longer in bytes than you expect, but varchar limits count characters in Postgres, so that's less likely."""),
    ],
    # 8 JSON API bug report
    [
        ("user", """our checkout api returns 422 for this payload, frontend dev says its the backend, backend says frontend lol

{{
  "customer": {{
    "name": "{name}",
    "email": "{email}",
    "billing_address": "{address}"
  }},
  "payment": {{
    "card_number": "{card}",
    "exp": "09/27"
  }}
}}"""),
        ("assistant", """A few things could trigger a 422 here:

1. `card_number` may contain spaces or dashes ("{card}"); many validators expect digits only. Strip non-digits before sending.
2. `billing_address` is a single string, while most APIs want structured fields, e.g.

{{
  "billing_address": {{
    "line1": "{street}",
    "postal_code": "{post}",
    "city": "{city}"
  }}
}}

3. `exp` might need separate month/year fields.

Also, raw card numbers shouldn't go to your own backend at all if you use a payment provider; tokenise on the frontend and send the token instead. That would settle the frontend vs backend debate too."""),
    ],
    # 9 Spanish customer support phone dictation
    [
        ("user", """hola! un cliente llamó y apunté esto rápido, me ayudas a pasarlo a un correo de confirmación? se llama {name}, teléfono más o menos: el {phone} (dijo "si no contesto, al fijo"), vive en {street}, {city}, CP {post}. quiere cambiar la fecha de entrega al jueves"""),
        ("assistant", """Claro, aquí tienes un borrador:

Asunto: Cambio de fecha de entrega confirmado

Estimado/a {name}:

Le confirmamos que hemos cambiado la fecha de entrega de su pedido al próximo jueves. La entrega se realizará en la dirección:

{street}
{post} {city}

Si el repartidor necesita contactarle, le llamará al {phone}.

Un saludo cordial,
Atención al cliente"""),
        ("user", "genial, pero no tengo su email, solo el teléfono. lo mando por sms entonces"),
    ],
    # 10 YAML config with password
    [
        ("user", """why does this docker compose not connect to the db? it just says auth failed

services:
  app:
    image: crm-sync:latest
    environment:
      DB_USER: crm
      DB_PASS: {password}
      ADMIN_EMAIL: {email}
  db:
    image: postgres:15
    environment:
      POSTGRES_USER: crm
      POSTGRES_PASSWORD: "{password}"
"""),
        ("assistant", """The two values look the same, but there are a couple of classic traps:

1. Quoting: in `DB_PASS: {password}` the value is unquoted, while `POSTGRES_PASSWORD` is quoted. If the password contains characters like `#`, `:` or starts with `*` or `&`, YAML will parse the unquoted one differently. Quote both.
2. The Postgres image only applies `POSTGRES_PASSWORD` on first init. If the volume already existed with an older password, changing it here does nothing. Run `docker compose down -v` (this deletes the data) or change the password inside psql.

And since this file is probably in git, move the secret into a `.env` file and rotate it, because "{password}" is now in your history."""),
    ],
    # 11 Polish HR leave
    [
        ("user", """Cześć, potrzebuję napisać maila do zespołu że {first} idzie na urlop macierzyński od przyszłego miesiąca i zastępstwo przejmuje {name2}. W sprawach pilnych dzwonić do {first2} pod {phone}. Możesz napisać coś krótkiego i ciepłego?"""),
        ("assistant", """Jasne, proszę:

Temat: Urlop {first} i zastępstwo

Cześć wszystkim,

od przyszłego miesiąca {first} rozpoczyna urlop macierzyński. Życzymy jej dużo zdrowia i spokojnego czasu z maluszkiem!

W tym czasie jej obowiązki przejmuje {name2}. W pilnych sprawach możecie dzwonić do {first2} pod numer {phone}.

Pozdrawiam serdecznie"""),
        ("user", "dzięki! dodaj jeszcze że {first3} pomaga przy fakturach"),
        ("assistant", "Dopisz po prostu przed pozdrowieniem: „Przy fakturach wspiera nas {first3}, więc pytania o rozliczenia kierujcie bezpośrednio do niej/niego.”"),
    ],
    # 12 Dutch invoices
    [
        ("user", """Hoi, ik moet een herinnering sturen voor een onbetaalde factuur. Klant is {name}, adres:
{address_lines}
Bedrag €1.240,00, factuurnummer 2024-118. Mijn rekeningnummer is {iban}. Kun je een nette maar duidelijke tekst maken?"""),
        ("assistant", """Natuurlijk. Hier een voorstel:

{name}
{address_lines}

Betreft: herinnering factuur 2024-118

Beste {first},

Volgens onze administratie is factuur 2024-118 van €1.240,00 nog niet voldaan. Wellicht is dit aan uw aandacht ontsnapt. Wilt u het bedrag binnen 14 dagen overmaken naar {iban}, onder vermelding van het factuurnummer?

Heeft u inmiddels betaald, dan kunt u deze herinnering als niet verzonden beschouwen.

Met vriendelijke groet,"""),
    ],
    # 13 forwarded email signature
    [
        ("user", """can you pull the contact details out of this forwarded email into a vcard-ish list?

---------- Forwarded message ---------
From: {name} <{email}>
Subject: Re: onboarding docs

Thanks, all signed and attached.

--
{name}
Senior Account Manager
M: {phone}
{address_qq}"""),
        ("assistant", """Here you go:

- Name: {name}
- Title: Senior Account Manager
- Email: {email}
- Mobile: {phone}
- Street: {street}
- Postcode / City: {post} {city}
- Country: {country}

The "???" in the signature are just line breaks that got lost when the email was forwarded."""),
    ],
    # 14 markdown table team list
    [
        ("user", """turn this into a markdown table pls, for the on-call wiki page

{name} - primary, {phone}, {email}
{name2} - backup, same team
{first3} - weekends only, ask in slack"""),
        ("assistant", """| Person | Role | Phone | Email |
|---|---|---|---|
| {name} | Primary | {phone} | {email} |
| {name2} | Backup | - | - |
| {first3} | Weekends only | via Slack | - |

You might want to add {first2}'s phone and email too, so the backup can be reached if Slack is down."""),
    ],
    # 15 Italian contract
    [
        ("user", """Ciao, devo preparare una lettera di assunzione per {name}, residente in {street}, {post} {city}. Il suo {id_kind} è {id}. Inizio il 3 marzo, contratto a tempo indeterminato, part-time 30 ore. Puoi scrivermi una bozza?"""),
        ("assistant", """Certo, ecco una bozza:

Gentile {name},
{street}
{post} {city}

Oggetto: Lettera di assunzione

Siamo lieti di comunicarLe che, a partire dal 3 marzo, Lei sarà assunto/a con contratto di lavoro subordinato a tempo indeterminato, con orario part-time di 30 ore settimanali.

Dati anagrafici: {name}, {id_kind} {id}.

La preghiamo di restituirci copia della presente firmata per accettazione.

Distinti saluti,
Ufficio Risorse Umane"""),
        ("user", "grazie mille, {first} sarà contentissimo"),
    ],
    # 16 shell script secret
    [
        ("user", """my backup script works when I run it by hand but not from cron. any idea?

#!/bin/bash
export SMTP_USER={email}
export SMTP_PASS='{password}'
pg_dump crm > /backups/crm_$(date +%F).sql
mail -s "backup done" {email} < /dev/null"""),
        ("assistant", """Cron runs with a minimal environment, so the usual suspects are:

1. PATH: `pg_dump` and `mail` may not be found. Use full paths (`which pg_dump`) or set `PATH=/usr/local/bin:/usr/bin:/bin` at the top.
2. The `%` in `$(date +%F)`: inside a crontab line `%` is special, but in a script file it's fine. If you put the command directly in crontab, escape it.
3. Auth: cron won't have your `~/.pgpass` if it runs as another user.

Also, having the mail password '{password}' in plain text in the script isn't great; put it in a file readable only by the cron user, and change it since it's been pasted here."""),
    ],
    # 17 Portuguese customer registration
    [
        ("user", """oi, to migrando os cadastros de clientes pra planilha nova e achei isso numa observação: "cliente {name} pediu pra guardar o cartão {card} pra próximas compras, telefone {phone}". posso deixar assim na planilha?"""),
        ("assistant", """Melhor não. Guardar o número completo do cartão ({card}) numa planilha é um risco grande e vai contra o PCI DSS e a LGPD. Sugiro:

- Manter só o nome ({name}) e o telefone ({phone}) na planilha.
- Se quiser referência ao cartão, guarde apenas os 4 últimos dígitos.
- Para compras futuras, use o recurso de cartão salvo (tokenização) do seu gateway de pagamento.

E apague a observação original do sistema antigo também."""),
        ("user", "entendi, vou falar com a {first2} do financeiro"),
    ],
    # 18 system + onboarding, lowercase name
    [
        ("system", "You help the IT team draft onboarding messages for new employees."),
        ("user", """new starter monday: {name}. username will be {name_lower} (we use full names with spaces, legacy system dont ask). temp login is {password}, work email {email}. write the welcome message"""),
        ("assistant", """Hi {first},

Welcome aboard! Here's what you need for your first day:

- Username: {name_lower}
- Email: {email}
- Temporary password: {password}

You'll be asked to choose a new password at first login. Please don't reuse the temporary one anywhere else.

If anything doesn't work, the service desk is on extension 2200.

See you Monday!"""),
        ("user", "maybe dont put the temp pw in the same message as the username? send it by sms?"),
        ("assistant", "Good call. Remove the \"Temporary password\" line from the email and send {password} separately by SMS or hand it over in person on Monday."),
    ],
    # 19 Czech payroll
    [
        ("user", """Dobrý den, potřebuju zkontrolovat údaje zaměstnance před výplatou. {name}, rodné číslo / {id_kind}: {id}, účet {iban}, bydliště {address}. Je IBAN ve správném formátu?"""),
        ("assistant", """Zkontrolovala jsem formát: IBAN {iban} by měl začínat kódem země, dvěma kontrolními číslicemi a pak číslem účtu. Pokud jde o český účet, musí mít celkem 24 znaků a začínat "CZ". Doporučuji ověřit kontrolní součet v internetovém bankovnictví nebo validátorem IBAN.

Pro přehled:
- Zaměstnanec: {name}
- {id_kind}: {id}
- Adresa: {address}

Pokud je účet zahraniční, ověřte si také poplatky za SEPA převod."""),
    ],
    # 20 Hungarian customer service
    [
        ("user", """Szia! Egy ügyfél panaszt írt, segítenél válaszolni? {name} írta, hogy a csomagja nem érkezett meg a {street}, {post} {city} címre, és kéri, hogy hívjuk vissza a {phone} számon. Udvarias, rövid választ szeretnék."""),
        ("assistant", """Természetesen:

Kedves {name}!

Köszönjük, hogy jelezte a problémát, és elnézést kérünk a kellemetlenségért. Utánajártunk a csomagnak, amelyet a {street}, {post} {city} címre küldtünk. Kollégánk még ma visszahívja Önt a {phone} számon, hogy egyeztessük a további lépéseket.

Üdvözlettel:
Ügyfélszolgálat"""),
        ("user", "köszi! {first3} fogja hívni délután"),
    ],
    # 21 Danish expense report
    [
        ("user", """Hej, jeg skal lave en rejseafregning. Jeg betalte hotellet med mit firmakort {card}, og flybilletten med mit private kort. Mit navn er {name}, adresse {address}. Hvordan skriver jeg det pænt til økonomiafdelingen?"""),
        ("assistant", """Her er et forslag:

Emne: Rejseafregning - {name}

Hej økonomi,

Vedhæftet er kvitteringer for min seneste rejse:

- Hotel: betalt med firmakort (slutter på de sidste fire cifre af {card})
- Flybillet: betalt med privat kort, ønskes refunderet

Refusionen bedes udbetalt til min lønkonto som normalt.

Adresse til evt. post: {address}

Mvh
{name}

Skriv kun de sidste fire cifre af kortnummeret i mailen, ikke hele nummeret."""),
    ],
    # 22 Python dedupe
    [
        ("user", """trying to dedupe contacts in pandas but these two dont match and they're clearly the same person:

rows = [
    {{"name": "{name}", "email": "{email}", "phone": "{phone}"}},
    {{"name": "{name_lower} ", "email": "{email}", "phone": ""}},
]
df = pd.DataFrame(rows)
df.drop_duplicates(subset=["name"])"""),
        ("assistant", """They differ in case and there's a trailing space in the second name. Normalise before deduplicating:

df["name_key"] = df["name"].str.strip().str.casefold()
df = df.sort_values("phone", ascending=False)
df = df.drop_duplicates(subset=["name_key"], keep="first")

Sorting by phone first keeps the row that has "{phone}" filled in. Deduplicating on email is often more reliable than on name, since two different people can both be called {name}:

df = df.drop_duplicates(subset=["email"])"""),
    ],
    # 23 reference letter, possessive
    [
        ("user", """I need to write a reference for {first}, she worked for us 4 years as a payroll specialist. The new employer asked for her {id_kind} ({id}) to match records, and wants me to confirm my number, {phone}. Can you draft it?"""),
        ("assistant", """To whom it may concern,

I am pleased to provide a reference for {name}, who worked as a payroll specialist in our team for four years.

{first}'s attention to detail was outstanding: she ran monthly payroll for over 300 employees with virtually no errors, and she led our migration to a new payroll platform. {surname} was also the person colleagues turned to with tricky tax questions.

For your records, her {id_kind} is {id}. I'm happy to discuss further; you can reach me at {phone}.

Yours faithfully,"""),
        ("user", "great. maybe soften the last bit, I'm not sure I should put the id in the letter itself"),
        ("assistant", "Fair point. You could drop the sentence with the {id_kind} and instead send it separately if the employer confirms they need it, ideally through their HR portal rather than email."),
    ],
    # 24 slack-style casual thread
    [
        ("user", """[10:02] {first_lower}: hey does anyone know the login for the shared stripe test account
[10:04] {first2}: its in 1password but the pw is {password} i think, user is {email}
[10:05] {first_lower}: ty!! also the test card {card} keeps getting declined?

^ can you summarise this thread for the standup notes"""),
        ("assistant", """Standup summary:

- {first} needed access to the shared Stripe test account; {first2} pointed to the team password manager.
- Open issue: the test card {card} is being declined in the test environment. Next step: check it's one of Stripe's documented test numbers and that the account is in test mode.

Side note: the thread contains the account password in plain text. It'd be worth deleting that message and rotating the password, since Slack history is searchable by the whole workspace."""),
    ],
]


HELD_OUT_29_TEMPLATES: list[list[tuple[str, str]]] = [
    # 1 elderly parent, care home form (en)
    [
        ("user", "my dad is moving into a care home next month and they sent me a form i don't understand. his name is {name}, he's 84, and he currently lives at {address}. the form asks for his {id_kind} and i found it in his drawer: {id}. what else do they usually need?"),
        ("assistant", "I'm sorry, that's a big move for both of you. For {first}, care homes usually ask for:\n\n1. Full name: {name}\n2. Current address: {address}\n3. {id_kind}: {id}\n4. GP details and a current medication list\n5. A next-of-kin contact (that would probably be you)\n6. Any power of attorney paperwork\n\nWould you like help filling in the next-of-kin section?"),
        ("user", "yes. i'm the next of kin, my number is {phone}. my brother {first2} should be the second contact but he never answers lol"),
        ("assistant", "Here's the section filled in:\n\nNext of kin 1: you, phone {phone}\nNext of kin 2: {first2} (mark as secondary)\n\nIt might be worth telling the home that {first2} is harder to reach, so they call you first about {first}."),
    ],
    # 2 German wedding, gift money
    [
        ("user", "Hallo! Wir heiraten im Juni und ich brauche einen kurzen Text für die Einladung. Das Brautpaar sind {name} und {name2}. Statt Geschenken wünschen wir uns einen Zuschuss für die Hochzeitsreise, Konto: {iban}. Rückmeldung bitte an {email}."),
        ("assistant", "Gerne, hier ein Vorschlag:\n\n---\nLiebe Familie, liebe Freunde,\n\nwir, {name} und {name2}, sagen Ja! Wir würden uns riesig freuen, diesen Tag mit euch zu feiern.\n\nWir haben schon fast alles, was wir brauchen. Wer uns trotzdem etwas schenken möchte, kann gern zu unserer Hochzeitsreise beitragen:\nIBAN: {iban}\n\nBitte gebt uns bis zum 1. Mai Bescheid unter {email}.\n\nAlles Liebe\n{first} & {first2}\n---"),
        ("user", "super, aber {first2} meint das klingt zu förmlich. kannst du es lockerer machen? und schreib dazu dass man auch anrufen kann, {phone}"),
        ("assistant", "Klar, etwas lockerer:\n\nIhr Lieben! {first} und {first2} trauen sich endlich 🎉 Feiert mit uns! Geschenke braucht ihr keine, aber ein kleiner Beitrag zur Hochzeitsreise wäre toll ({iban}). Sagt uns bis 1. Mai Bescheid: {email} oder einfach anrufen unter {phone}."),
    ],
    # 3 French funeral, bank letter
    [
        ("user", "Bonjour, ma grand-mère est décédée la semaine dernière et je dois écrire à sa banque pour clôturer son compte. Elle s'appelait {name}, elle habitait\n{address_lines}\nSon IBAN c'est {iban}. Vous pouvez m'aider à rédiger la lettre ?"),
        ("assistant", "Toutes mes condoléances. Voici un modèle de lettre :\n\nObjet : Décès de Mme {name} – clôture du compte {iban}\n\nMadame, Monsieur,\n\nJ'ai la tristesse de vous informer du décès de ma grand-mère, Mme {name}, domiciliée au :\n{address_lines}\n\nJe vous prie de bien vouloir bloquer puis clôturer le compte référencé ci-dessus et de me communiquer la marche à suivre pour la succession. Vous trouverez ci-joint une copie de l'acte de décès.\n\nVeuillez agréer, Madame, Monsieur, mes salutations distinguées."),
        ("user", "merci. le notaire demande aussi son {id_kind}, c'est {id}. je le mets dans la lettre ? et je signe comment, je suis {name2}"),
        ("assistant", "Oui, vous pouvez l'ajouter juste après son nom : « Mme {name}, {id_kind} : {id} ». Pour la signature, mettez simplement :\n\n{name2}, petit-fils/petite-fille de la défunte\n\nEt joignez une copie de votre propre pièce d'identité, la banque la demandera sûrement."),
    ],
    # 4 kid's football club registration JSON (en)
    [
        ("user", "i'm writing a little signup form for my son's under-10s football club. can you check this json is valid?\n\n{{\n  \"player\": \"{first} {surname}\",\n  \"parent\": \"{name2}\",\n  \"phone\": \"{phone}\",\n  \"email\": \"{email}\",\n  \"kit_size\": \"YS\"\n}}"),
        ("assistant", "It's valid JSON. A couple of suggestions so the club can reuse it:\n\n```json\n{{\n  \"player\": {{\"first_name\": \"{first}\", \"last_name\": \"{surname}\"}},\n  \"guardian\": {{\"name\": \"{name2}\", \"phone\": \"{phone}\", \"email\": \"{email}\"}},\n  \"kit_size\": \"YS\",\n  \"medical_notes\": \"\"\n}}\n```\n\nSplitting {first}'s name makes sorting the squad list easier."),
        ("user", "nice. the coach also wants the subs paid by card, can i just add a field? like \"card\": \"{card}\""),
        ("assistant", "I'd avoid storing the full card number ({card}) in a JSON file, since anyone who can open it can read it. Use a payment link instead and only store a reference like \"subs_paid\": true. If {name2} pays online, the club's payment provider keeps the card details."),
    ],
    # 5 Spanish neighbours dispute
    [
        ("user", "Hola, tengo un problema con el vecino de arriba. Se llama {name} y pone la música a tope todas las noches. Vivimos en {street}, {city}. Quiero escribir al administrador de la finca, ¿me ayudas?"),
        ("assistant", "Claro. Aquí tienes un borrador:\n\nEstimado administrador:\n\nMe dirijo a usted como vecino del edificio situado en {street}, {city}, para informarle de las molestias reiteradas por ruido procedentes del piso superior, ocupado por D. {name}. Desde hace varias semanas la música se mantiene a un volumen muy alto pasada la medianoche.\n\nLe agradecería que tomara las medidas oportunas. Quedo a su disposición en el teléfono [tu teléfono].\n\nAtentamente,"),
        ("user", "perfecto. mi telefono es el {phone}, y firma como {name2}. y añade que {first} ya fue avisado dos veces"),
        ("assistant", "Versión final:\n\n...Desde hace varias semanas la música se mantiene a un volumen muy alto pasada la medianoche. {first} ya ha sido avisado en dos ocasiones, sin resultado.\n\nQuedo a su disposición en el teléfono {phone}.\n\nAtentamente,\n{name2}"),
    ],
    # 6 flat share bills CSV (en)
    [
        ("user", "ok so me, {first2} and {first3} share a flat with {first} and the bills are a mess. here's what i have\n\nwho,item,amount\n{first},electric,64.20\n{first2},internet,35.00\n{first3},gas,48.10\n{first},water,22.75\n\nwho owes who?"),
        ("assistant", "Total is 170.05, so each of the four of you owes 42.51.\n\n- {first} paid 86.95 → is owed 44.44\n- {first2} paid 35.00 → owes 7.51\n- {first3} paid 48.10 → is owed 5.59\n- you paid 0.00 → owe 42.51\n\nSimplest settlement: you pay {first} 42.51, {first2} pays {first} 1.93 and {first3} 5.58... roughly. Want me to round it?"),
        ("user", "yes round it. {first_lower} wants it all sent to {iban}. oh and can you put in the note that the new wifi is FlatNet5G and the code is {password} cos people keep asking"),
        ("assistant", "Here's a message you can paste into the group chat:\n\nhey all 👋 bills for this month:\n- me → {first}: 42.50\n- {first2} → {first}: 2.00\n- {first3} → {first}: 5.50\nplease send to {first}'s account {iban}\n\nalso new wifi: FlatNet5G, code {password}"),
    ],
    # 7 Italian lost wallet found
    [
        ("user", "Ciao, stamattina ho trovato un portafoglio sul tram. Dentro c'è una carta d'identità di {name}, residente in {address}, e una carta di credito {card}. Cosa devo fare?"),
        ("assistant", "Che gentile! Le opzioni migliori sono:\n\n1. Portarlo all'ufficio oggetti smarriti del Comune o ai Carabinieri.\n2. Se vuoi contattare direttamente {name}, puoi lasciare un biglietto all'indirizzo {address}.\n\nNon usare né fotografare la carta {card}: consegnala così com'è insieme al portafoglio."),
        ("user", "c'è anche un biglietto da visita con un numero, {phone}. chiamo? cosa dico?"),
        ("assistant", "Sì, puoi chiamare. Potresti dire:\n\n\"Buongiorno, parlo con {first}? Ho trovato il suo portafoglio sul tram stamattina. Dentro c'erano i documenti e una carta. Come preferisce riaverlo?\"\n\nSe non risponde nessuno al {phone}, lascia il portafoglio ai Carabinieri e comunica loro il numero."),
    ],
    # 8 Polish vet
    [
        ("user", "Dzień dobry, mój pies Burek od wczoraj nie je i wymiotuje. Weterynarz pani {name} przyjmuje na {street} w {city}, ale nie odbiera. Ma jeszcze numer {phone}, dzwonić tam w niedzielę?"),
        ("assistant", "Jeśli Burek wymiotuje od ponad doby i nic nie je, warto nie czekać do poniedziałku. Tak, zadzwoń pod {phone} – wielu weterynarzy ma dyżurny numer. Jeśli pani {surname} nie odbierze, poszukaj całodobowej kliniki w {city}. Zabierz ze sobą książeczkę zdrowia psa."),
        ("user", "dodzwoniłam się do jej asystenta {first2}. kazał wysłać zdjęcia na {email}. napiszesz mi krótką wiadomość?"),
        ("assistant", "Proszę:\n\nDo: {email}\nTemat: Burek – wymioty od wczoraj\n\nDzień dobry,\nzgodnie z rozmową telefoniczną z Panem {first2} przesyłam zdjęcia. Burek (pies, 7 lat) od wczoraj nie je i wymiotował cztery razy. Proszę o informację, czy pani doktor {surname} może go dziś przyjąć.\n\nPozdrawiam"),
    ],
    # 9 Dutch landlord leak
    [
        ("user", "Hoi, er lekt al drie weken water door het plafond van mijn badkamer en mijn verhuurder {name} reageert niet. adres is {address_lower}. Kun je een formele brief maken? zijn mail is {email}"),
        ("assistant", "Natuurlijk. Hier een voorbeeld:\n\nAan: {name} ({email})\nBetreft: Lekkage badkamer, {address}\n\nBeste heer/mevrouw {surname},\n\nSinds drie weken lekt er water door het plafond van de badkamer van de woning aan {address}. Ik heb u hierover eerder gemeld, maar nog geen reactie ontvangen. Ik verzoek u het gebrek binnen 14 dagen te laten herstellen. Gebeurt dat niet, dan overweeg ik huurverlaging aan te vragen bij de Huurcommissie.\n\nMet vriendelijke groet,"),
        ("user", "dank je! kan er bij dat ik de loodgieter zelf betaal en de kosten van de huur aftrek? mijn rekening is {iban} als hij het liever terugstort"),
        ("assistant", "Voeg dit toe voor de afsluiting:\n\n\"Mocht het gebrek niet binnen de termijn verholpen zijn, dan laat ik de reparatie zelf uitvoeren en verreken ik de kosten met de huur. U kunt de kosten ook terugstorten op {iban}.\"\n\nLet op: laat {surname} dit eerst schriftelijk weten, zoals hierboven, anders kan verrekenen lastig worden."),
    ],
    # 10 Portuguese (BR) caring for mother, medication
    [
        ("user", "oi, minha mãe {name} tem 79 anos e toma uns 6 remédios. to tentando organizar uma tabela pra cuidadora. o {id_kind} dela é {id}, precisa colocar?"),
        ("assistant", "Boa ideia organizar! Pra cuidadora não precisa colocar o {id_kind}, mas é bom ter à mão pra farmácia e consultas. Uma tabela simples:\n\n| Horário | Remédio | Dose |\n|---|---|---|\n| 08h | Losartana | 50 mg |\n| 12h | ... | ... |\n\nNo topo coloque: Paciente: {name}. Em emergência ligar para: (seu número)."),
        ("user", "meu número é {phone}, e o da minha irmã {first2} tbm. a cuidadora se chama {first3}"),
        ("assistant", "Então o cabeçalho fica assim:\n\nPaciente: {name}\nCuidadora: {first3}\nEmergência: {phone} (filha) / {first2} (irmã)\n{id_kind}: {id} (só para farmácia e hospital)\n\n{first3} pode marcar um ✓ em cada horário quando a dona {first} tomar o remédio."),
    ],
    # 11 Czech wedding venue
    [
        ("user", "Ahoj, pomůžeš mi napsat mail na zámek, kde chceme mít svatbu? Jsme {name} a {name2}, termín 14. září, asi 80 hostů. Kontakt na mě {email}, telefon {phone}."),
        ("assistant", "Jasně, tady je návrh:\n\nDobrý den,\n\njmenuji se {name} a se snoubencem/snoubenkou {name2} plánujeme svatbu na 14. září pro přibližně 80 hostů. Rádi bychom se zeptali, zda máte v tomto termínu volno, a požádali o cenovou nabídku včetně pronájmu sálu a cateringu.\n\nOzvat se mi můžete na {email} nebo na telefonu {phone}.\n\nS pozdravem\n{name}"),
        ("user", "díky. {first2} chce ještě připsat že potřebujeme i ubytování pro rodiče, ať to není tak dlouhý"),
        ("assistant", "Stačí přidat jednu větu za cenovou nabídku: „Zajímalo by nás také ubytování pro rodiče (cca 4 pokoje).“ Jinak může mail zůstat, jak je, a podepsat se můžete oba: {first} a {first2}."),
    ],
    # 12 Hungarian flat rental, password
    [
        ("user", "Szia! Kiadom a lakásomat egy diáknak, {name} a neve. Írnál egy rövid üdvözlő üzenetet? A cím {address}, a bérleti díjat erre a számlára kérem: {iban}."),
        ("assistant", "Persze! Itt egy javaslat:\n\nKedves {first}!\n\nÜdvözöllek a lakásban ({address})! Remélem, jól fogod érezni magad. A havi bérleti díjat minden hónap 5-ig kérlek utald a következő számlára: {iban}.\n\nHa bármi gond van, nyugodtan keress.\n\nÜdv,"),
        ("user", "írd bele a wifit is, a jelszó {password}, meg hogy a kulcsot a szomszédnál {first2}-nál hagyom"),
        ("assistant", "Kiegészítve:\n\n...A wifi neve Otthon_2, a kód: {password}.\nA kulcsot a szomszédnál, {first2}-nál hagyom, ő a földszinten lakik.\n\nHa bármi gond van, nyugodtan keress.\n\nÜdv,"),
    ],
    # 13 Danish kids' football club
    [
        ("user", "hej, jeg er træner for U9 i vores lille fodboldklub og skal sende en besked til forældrene om stævnet på lørdag. kontaktperson er {name}, tlf {phone}, mail {email}. kan du skrive den?"),
        ("assistant", "Selvfølgelig! Her er et forslag:\n\nKære forældre til U9 ⚽\n\nPå lørdag skal vi til stævne. Vi mødes kl. 8.30 ved klubhuset. Husk madpakke, vand og benskinner.\n\nSpørgsmål kan rettes til {name} på {phone} eller {email}.\n\nSportslig hilsen\nTrænerteamet"),
        ("user", "tak! {first} kan ikke lørdag alligevel, så det er {name2} der tager telefonen. og skriv at {first3}'s far kører en bus fra {street}"),
        ("assistant", "Opdateret:\n\nPå lørdag skal vi til stævne. Vi mødes kl. 8.30 ved klubhuset. {first3}s far kører en bus fra {street} kl. 8.15 for dem, der mangler lift.\n\nSpørgsmål kan rettes til {name2}, da {first} desværre ikke kan på lørdag."),
    ],
    # 14 forwarded landlord message, address_qq export (en)
    [
        ("user", "can you help me understand this? my landlord forwarded it and the formatting is broken\n\n---------- Forwarded message ---------\nFrom: {name} <{email}>\nSubject: rent increase\n\nDear tenant, as of 1 March the rent for {address_qq} will increase by 4%. Please contact me on {phone} with any questions.\nRegards, {surname}"),
        ("assistant", "The \"???\" are just line breaks that got lost. The address is:\n\n{address_lines}\n\nIn short, {name} is telling you the rent goes up 4% from 1 March. Depending on your country and tenancy type there may be rules on notice and how often rent can rise, so check your contract before replying to {email}."),
        ("user", "ok. write a reply asking for it in writing with the legal notice period pls. sign it {name2}"),
        ("assistant", "Dear {surname},\n\nThank you for your message about the rent for {street}. Could you please send the increase formally in writing, stating the legal basis and notice period that applies? I'd like to review it before it takes effect.\n\nKind regards,\n{name2}"),
    ],
    # 15 Python RSVP script (en)
    [
        ("user", "wrote a tiny python thing to track rsvps for my sister's wedding but it crashes\n\nguests = [\n    {{\"name\": \"{name}\", \"email\": \"{email}\", \"rsvp\": True}},\n    {{\"name\": \"{name2}\", \"phone\": \"{phone}\", \"rsvp\": None}},\n]\nfor g in guests:\n    print(g[\"name\"], g[\"email\"])"),
        ("assistant", "It crashes with KeyError because {name2}'s entry has no \"email\" key. Use .get():\n\n```python\nfor g in guests:\n    contact = g.get(\"email\") or g.get(\"phone\", \"no contact\")\n    print(g[\"name\"], contact)\n```\n\nThat prints {name} with {email} and {name2} with {phone}."),
        ("user", "works! how do i list only the ones who haven't replied, like {first2}"),
        ("assistant", "```python\npending = [g[\"name\"] for g in guests if g[\"rsvp\"] is None]\nprint(\"still waiting on:\", \", \".join(pending))\n```\n\nRight now that would print \"still waiting on: {name2}\", so you might want to nudge {first2} at {phone}."),
    ],
    # 16 elderly mum, bank login, password without "password:" (en)
    [
        ("user", "my mum keeps locking herself out of online banking. she writes everything on post-its. the one on the fridge says her login is {email} and the secret word is {password}. is it safe to keep it like that??"),
        ("assistant", "Not really. Anyone visiting the house could see {password} on the fridge and use it with {email}. A few gentler options:\n\n- A small notebook kept in a drawer, not in view\n- A simple password manager you set up for her\n- Ask the bank about a card reader or app login so she doesn't need to remember the word at all"),
        ("user", "she's 82 lol an app is not happening. her name is {name_lower}, can you write a note i can give the bank asking them to help her in branch? she lives at {address}"),
        ("assistant", "Of course:\n\nTo whom it may concern,\n\nMy mother, {name}, of {address}, is a customer of your bank and has difficulty using online banking. Could you please help {first} in branch with an alternative way to access her account, such as telephone banking or a card reader?\n\nThank you for your patience with her.\n\nKind regards,"),
    ],
    # 17 vet bill, casual lower case, card dictated (en)
    [
        ("user", "vet just called, cat needs surgery, they want a deposit over the phone. im reading my card to them as {card} exp 09/27, is that normal or a scam?? the vet is dr {name} on {street}"),
        ("assistant", "Many vets do take phone deposits, but to be safe: hang up and call the practice back on the number from their website or your cat's records, not a number they gave you. If it's really Dr {surname}'s practice on {street}, they'll confirm the amount. If you've already given {card} to someone you're unsure about, call your bank now to freeze it."),
        ("user", "ok called back on {phone}, it's legit phew. {first3} the nurse said surgery is tomorrow 9am"),
        ("assistant", "Good news. For tomorrow: no food after midnight for the cat, water is usually fine until morning, but check with {first3}. Keep {phone} handy in case Dr {surname} needs to reach you during the operation."),
    ],
    # 18 German care insurance application
    [
        ("system", "Du bist ein hilfsbereiter Assistent für Fragen rund um Pflege und Behörden in Deutschland."),
        ("user", "Mein Vater {name} braucht einen Pflegegrad. Ich will den Antrag an die Pflegekasse schicken. Seine Versichertennummer bzw. {id_kind} ist {id}, er wohnt:\n{address_lines}\nWie formuliere ich das?"),
        ("assistant", "Ein formloser Antrag genügt. Zum Beispiel:\n\nAntrag auf Leistungen der Pflegeversicherung\n\nVersicherter: {name}\n{id_kind}: {id}\nAnschrift:\n{address_lines}\n\nSehr geehrte Damen und Herren,\n\nhiermit beantrage ich für meinen Vater, Herrn {name}, Leistungen der Pflegeversicherung und bitte um Begutachtung durch den Medizinischen Dienst.\n\nMit freundlichen Grüßen"),
        ("user", "danke!! Soll ich meine Handynummer dazuschreiben? {phone}. Und meine Schwester {first2} kümmert sich eigentlich mehr um ihn"),
        ("assistant", "Ja, unbedingt – der Medizinische Dienst ruft meist an, um einen Termin zu vereinbaren. Schreib unter den Antrag: \"Ansprechpartner: {first2} (Tochter) bzw. Tel. {phone}\". Bei der Begutachtung sollte am besten {first2} dabei sein, da sie den Alltag von {first} am besten kennt."),
    ],
    # 19 French flat share SQL
    [
        ("user", "salut, j'ai fait une petite base sqlite pour les dépenses de la coloc mais ma requête marche pas\n\nINSERT INTO depenses (qui, quoi, montant) VALUES ('{first}', 'courses', 42.5), ('{first2}', 'électricité', 61), ('{first3}', 'internet', 29.99);\nSELECT qui, SUM(montant) FROM depenses;"),
        ("assistant", "Il manque le GROUP BY :\n\n```sql\nSELECT qui, SUM(montant) AS total\nFROM depenses\nGROUP BY qui;\n```\n\nTu obtiendras une ligne pour {first}, une pour {first2} et une pour {first3}."),
        ("user", "top merci. et j'ai aussi une table 'compte' avec le code de la box, genre INSERT INTO compte VALUES ('box', '{password}'); c'est grave ?"),
        ("assistant", "Ce n'est pas dramatique pour un code wifi, mais évite d'y mettre des mots de passe plus sensibles. Si le fichier est partagé (Drive, Git...), tout le monde verra '{password}'. Une note épinglée dans le groupe de la coloc suffit largement."),
    ],
    # 20 obituary (en)
    [
        ("user", "I need to write a short death notice for the local paper. My grandfather was {name}, born and raised in {city}. He leaves his wife {first2} and three grandchildren. Service is at St Mary's on Friday."),
        ("assistant", "Here's a draft:\n\n{surname}, {first}. Passed away peacefully, aged 91. Born and raised in {city}, {first} was a much-loved husband of {first2} and devoted grandfather of three. The funeral service will be held at St Mary's Church on Friday at 11am. Family flowers only; donations if desired to the local hospice."),
        ("user", "lovely. add that people can contact me for details, {email} or {phone}. and that {first}'s favourite saying was 'never mind, put the kettle on'"),
        ("assistant", "{surname}, {first}. Passed away peacefully, aged 91. Born and raised in {city}, {first} was a much-loved husband of {first2} and devoted grandfather of three. In his own words: \"never mind, put the kettle on.\" The funeral service will be held at St Mary's Church on Friday at 11am. Enquiries to {email} or {phone}."),
    ],
    # 21 Spanish lost wallet, block card
    [
        ("user", "me robaron la cartera en el metro!! tenia la tarjeta {card} y mi {id_kind}, el numero es {id}. que hago primero"),
        ("assistant", "Lo siento mucho. En este orden:\n\n1. Llama ya a tu banco para bloquear la tarjeta {card}. El número suele estar en la app o en la web.\n2. Pon la denuncia en comisaría; menciona el {id_kind} {id}.\n3. Pide cita para renovar el documento.\n\n¿Quieres que te prepare un texto para la denuncia?"),
        ("user", "si porfa. soy {name}, vivo en {address}, mi movil es {phone}"),
        ("assistant", "Aquí tienes:\n\nD./Dña. {name}, con domicilio en {address} y teléfono {phone}, manifiesta que hoy, en el metro, le fue sustraída su cartera, que contenía:\n- Tarjeta bancaria n.º {card} (ya bloqueada / pendiente de bloqueo)\n- {id_kind} n.º {id}\n\nSolicita que conste a efectos de denuncia."),
    ],
    # 22 neighbour dispute incident log, markdown table (en, system)
    [
        ("system", "You help users prepare clear, factual documents for community mediation."),
        ("user", "my neighbour {name} keeps parking across my drive. I want a log for the mediation service. incidents: mon 7am, wed 6pm, sat all day. i'm at {street}, she's next door. mediation wants my email too: {email}"),
        ("assistant", "Here's a factual log:\n\n| Date | Time | What happened |\n|------|------|---------------|\n| Monday | 07:00 | {first}'s car blocked the drive at {street} |\n| Wednesday | 18:00 | Drive blocked again |\n| Saturday | all day | Drive blocked, could not leave |\n\nContact for mediation: {email}\n\nKeep it to facts, without comments about {first} personally; mediators respond better to that."),
        ("user", "good. {first2} from number 14 saw it on saturday, can i add her as witness? her mobile is {phone}"),
        ("assistant", "Yes, add a line under the table:\n\nWitness (Saturday): {first2}, neighbour at number 14, tel. {phone}\n\nAsk {first2} first whether she's happy for the mediators to contact her."),
    ],
    # 23 Italian wedding seating plan
    [
        ("user", "ciao! sto facendo il tableau per il matrimonio di mia cugina. al tavolo 3 ci sono {name}, {name2}, {first3} e la zia. {first2} però non parla con {first} da anni... li separo?"),
        ("assistant", "Meglio evitare tensioni nel giorno delle nozze. Potresti fare così:\n\n- Tavolo 3: {name}, {first3}, la zia\n- Tavolo 5: {name2}\n\nCosì {first2} e {first} non sono vicini ma restano nella stessa sala, senza che sembri un'esclusione."),
        ("user", "perfetto. la wedding planner vuole la lista via mail a {email}, con il mio numero {phone}. me la scrivi?"),
        ("assistant", "Ecco:\n\nA: {email}\nOggetto: Tableau – tavoli 3 e 5\n\nCiao,\nti mando la disposizione aggiornata:\nTavolo 3: {name}, {first3}, la zia\nTavolo 5: {name2}\n\nPer qualsiasi dubbio chiamami al {phone}.\n\nGrazie!"),
    ],
    # 24 child's swim club, email signature, phone in words (en)
    [
        ("user", "got this from my daughter's swim club, can you tell me what they actually want me to do?\n\nHi all, reminder that gala fees are due Friday. Pay by bank transfer to {iban} with your swimmer's name as reference. Any problems, ring me on oh-seven... actually just use {phone}.\n\nThanks,\n{name}\nClub Secretary\n{email}\n{address}"),
        ("assistant", "They want you to pay the gala fee by Friday via bank transfer:\n\n- To: {iban}\n- Reference: your daughter's name\n\nIf anything's unclear, {name} (the club secretary) can be reached on {phone} or {email}."),
        ("user", "her name's {first3} {surname}, so reference is just that? and i also need to update my login for the club portal, the new one is {password}, can you remind me in the reply"),
        ("assistant", "Yes, use \"{first3} {surname}\" as the reference so {first} can match the payment.\n\nReminder for you: your new club portal password is {password}. Better to save it in a password manager than keep it in this chat, though."),
    ],
]


# Held-out chat templates, set 30: money and official paperwork.
HELD_OUT_30_TEMPLATES: list[list[tuple[str, str]]] = [
    # 1 German: car insurance claim
    [
        ("user", """Hallo, ich brauche Hilfe bei einer Schadensmeldung an meine Kfz-Versicherung. Gestern hat mir jemand auf dem Parkplatz vom Rewe die Tür eingedellt und ist abgehauen. Zeugin war Frau {name2}, die hat sich das Kennzeichen aufgeschrieben.
Meine Daten: {name}, {address}, Tel. {phone}
Die Erstattung bitte auf {iban}
Kannst du mir einen sachlichen Text schreiben?"""),
        ("assistant", """Gern, hier ein Entwurf:

Betreff: Schadensmeldung – Parkschaden mit Unfallflucht

Sehr geehrte Damen und Herren,

hiermit melde ich einen Schaden an meinem Fahrzeug. Am gestrigen Tag wurde mein geparktes Fahrzeug auf dem Parkplatz eines Supermarkts von einem unbekannten Fahrzeug an der Fahrertür beschädigt; der Verursacher hat sich vom Unfallort entfernt. Frau {name2} hat den Vorfall beobachtet und das Kennzeichen notiert; sie ist bereit, als Zeugin auszusagen.

Ich bitte um Bearbeitung und Erstattung der Reparaturkosten auf folgendes Konto:
IBAN: {iban}

Für Rückfragen erreichen Sie mich unter {phone}.

Mit freundlichen Grüßen
{name}
{address}

Tipp: Erstatte zusätzlich Anzeige bei der Polizei, viele Versicherer verlangen das Aktenzeichen."""),
        ("user", "danke!! muss ich {name2}s Adresse auch angeben oder reicht der Name erstmal"),
        ("assistant", "Für die erste Meldung reicht der Name. Die Versicherung fragt die Kontaktdaten von Frau {name2} normalerweise erst an, wenn sie eine Zeugenaussage braucht. Frag sie am besten vorher, ob sie einverstanden ist, dass du ihre Nummer weitergibst."),
    ],
    # 2 English: US tax return, casual
    [
        ("user", """ok so im doing my taxes on freetaxusa and it keeps rejecting my return. says the {id_kind} doesnt match IRS records. i typed {id} which is literally whats on my card?? name is {name_lower} if that matters, filed jointly w my wife {first2} last year but single this year"""),
        ("assistant", """A mismatch reject usually isn't about the number alone. The IRS checks the name and number together against what the SSA has on file. A few things to check:

1. **Name spelling and order.** Enter it exactly as it appears on the card: {name}. If your card shows a different surname than {surname}, or a hyphen, use that.
2. **Filing status change.** Going from married filing jointly with {first2} to single is fine, but if the divorce wasn't final by Dec 31 you'd have to file as married filing separately, not single.
3. **Last year's AGI.** If they ask for it to verify your identity, use the amount from the joint return.

Once you've fixed it, re-enter {id} carefully (transposed digits are the most common cause) and resubmit."""),
        ("user", "oh crap the divorce was final in february. so MFS?? also my mailing adress changed to {address}, do i just put the new one"),
        ("assistant", "Yes. If the divorce wasn't final until February, you were still married on December 31, so you'd file married filing separately (or head of household if you qualify). Put your current address, {address}, on the return. The IRS will update its records from that, but you can also file Form 8822 to be safe."),
    ],
    # 3 French: bank dispute / chargeback
    [
        ("user", """Bonjour, j'ai un souci avec ma banque. Un site de billets de concert m'a débité 189,00 € deux fois sur ma carte {card} et le vendeur ne répond plus depuis 3 semaines. Je veux contester le 2e paiement. Tu peux m'aider à écrire à la banque ? Je m'appelle {name}, mon mail c'est {email}"""),
        ("assistant", """Bien sûr. Voici un modèle de lettre de contestation :

Objet : Contestation d'une opération par carte bancaire – double débit

Madame, Monsieur,

Je soussigné(e) {name}, titulaire de la carte n° {card}, conteste l'opération de 189,00 € débitée une seconde fois par le commerçant [nom du site]. Il s'agit d'un double prélèvement pour un seul achat. J'ai contacté le commerçant à plusieurs reprises depuis trois semaines, sans réponse.

Conformément à l'article L133-18 du Code monétaire et financier, je vous demande le remboursement de cette somme.

Vous pouvez me joindre à l'adresse {email}.

Veuillez agréer, Madame, Monsieur, l'expression de mes salutations distinguées.

{name}

Joins des captures d'écran du relevé et de tes messages au vendeur. Attention, pour un paiement par carte tu as en principe 13 mois pour contester."""),
        ("user", "super merci. je mets aussi mon portable ? c'est le {phone}"),
        ("assistant", "Oui, ajoute-le sous ton adresse mail, par exemple : « Téléphone : {phone} ». Le conseiller pourra te rappeler plus vite s'il manque une pièce."),
    ],
    # 4 Dutch: rental deposit
    [
        ("user", """Mijn oude verhuurder ({name2}) weigert mijn borg van €1.450 terug te betalen. Ik ben al 2 maanden weg uit {street} in {city}. Hij zegt dat er 'schade aan de vloer' is maar er waren al krassen toen ik erin trok, staat ook in het inspectierapport. Kun je een ingebrekestelling voor me schrijven?"""),
        ("assistant", """Natuurlijk. Hier is een concept:

Aan: {name2}
Betreft: Ingebrekestelling terugbetaling waarborgsom

Geachte heer/mevrouw {name2},

Op [datum] heb ik de huurwoning aan {street} te {city} opgeleverd. Bij aanvang van de huur is in het inspectierapport vastgelegd dat de vloer al krassen vertoonde. Van nieuwe schade is dus geen sprake.

Ik verzoek u daarom de volledige waarborgsom van € 1.450 binnen 14 dagen na dagtekening van deze brief over te maken op rekeningnummer [IBAN], t.n.v. [uw naam]. Blijft betaling uit, dan zal ik zonder nadere aankondiging juridische stappen ondernemen en u de buitengerechtelijke kosten in rekening brengen.

Met vriendelijke groet,
[uw naam]

Sinds 1 juli 2023 moet een verhuurder de borg in principe binnen 14 dagen terugbetalen (of 30 dagen bij schade), dus je staat sterk."""),
        ("user", "top. mijn naam is {name} en de rekening is {iban}, nieuw adres {address}. kun je het even invullen"),
        ("assistant", """Ingevuld:

...over te maken op rekeningnummer {iban}, t.n.v. {name}.

Met vriendelijke groet,
{name}
{address}

Verstuur hem aangetekend of per e-mail met ontvangstbevestiging, zodat je kunt bewijzen dat {name2} hem heeft ontvangen."""),
    ],
    # 5 Polish: residence permit
    [
        ("user", """Cześć, mam pytanie o kartę pobytu. Złożyłam wniosek w urzędzie wojewódzkim w marcu i dalej nic. Dostałam dziś pismo, przepisuję bo jest zeskanowane:

WEZWANIE
Pani {name}
{address_lines}
W związku z prowadzonym postępowaniem w sprawie udzielenia
zezwolenia na pobyt czasowy wzywa się Panią do
uzupełnienia braków formalnych w terminie 14 dni:
- aktualne zaświadczenie o zatrudnieniu
- kopia wszystkich stron paszportu ({id_kind} {id})

Co mam zrobić? Pracodawca to firma mojego szwagra, {name2}."""),
        ("assistant", """To standardowe wezwanie do uzupełnienia braków, nie ma się czym martwić, ale termin jest ważny.

Co zrobić:
1. Poproś pracodawcę ({name2}) o aktualne zaświadczenie o zatrudnieniu z datą, stanowiskiem i wynagrodzeniem, podpisane przez osobę uprawnioną.
2. Zrób kopię wszystkich stron paszportu, również pustych. Numer {id} musi się zgadzać z tym we wniosku.
3. Dołącz krótkie pismo przewodnie: „W odpowiedzi na wezwanie z dnia [data], sygn. akt [numer], przedkładam…", podpisane {name}.
4. Wyślij listem poleconym za potwierdzeniem odbioru albo złóż osobiście na dzienniku podawczym. Liczy się data nadania w polskiej placówce pocztowej.

Jeśli nie zdążysz w 14 dni, wniosek może zostać pozostawiony bez rozpoznania."""),
        ("user", "a mogę podać w piśmie numer telefonu? {phone} żeby zadzwonili jakby coś"),
        ("assistant", "Tak, możesz. Dopisz pod podpisem: „Tel. kontaktowy: {phone}”. Urząd nie musi dzwonić, ale często to robi, gdy czegoś brakuje."),
    ],
    # 6 Italian: used car sale contract
    [
        ("user", """Sto vendendo la mia Panda del 2016 a un privato, {name2}, per 4.800 euro. Mi serve una scrittura privata di vendita da firmare prima del passaggio al PRA. Io sono {name}, residente in {address}, {id_kind} {id}. Pagamento con bonifico sul mio conto {iban}."""),
        ("assistant", """Ecco una bozza di scrittura privata:

SCRITTURA PRIVATA DI COMPRAVENDITA DI AUTOVEICOLO USATO

Con la presente scrittura privata tra:
- {name}, residente in {address}, {id_kind} {id} (di seguito "Venditore")
- {name2}, residente in [indirizzo], documento [tipo e numero] (di seguito "Acquirente")

si conviene quanto segue:

1. Il Venditore vende all'Acquirente l'autoveicolo Fiat Panda, targa [targa], telaio [n. telaio], immatricolato nel 2016, km [km].
2. Il prezzo è pattuito in € 4.800,00 (quattromilaottocento/00), da versare tramite bonifico bancario sul conto IBAN {iban} intestato a {name}.
3. Il veicolo viene venduto nello stato di fatto in cui si trova, visto e piaciuto.
4. Le parti si impegnano a effettuare il passaggio di proprietà entro 60 giorni.

Luogo e data ________
Firma Venditore ________ Firma Acquirente ________

Consegna le chiavi solo quando il bonifico risulta accreditato, non solo "disposto"."""),
        ("user", "perfetto. {first2} vuole pagare metà in contanti, si può?"),
        ("assistant", "Sì, finché resti sotto il limite per i contanti (attualmente 5.000 €, e 2.400 € in contanti è sotto). Aggiungi al punto 2: «di cui € 2.400,00 in contanti alla firma, di cui il Venditore rilascia quietanza, e € 2.400,00 tramite bonifico sull'IBAN {iban}». Fatti firmare la ricevuta da {first2}."),
    ],
    # 7 English: marketplace scam check
    [
        ("user", """is this a scam? selling my sofa on fb marketplace and got this:

"Hi, is it still available? I will pay full price plus shipping, my mover will pick it up. I've sent payment via Zelle but it's pending because your account needs to be upgraded to business. Please email zelle support at {email} with your card number to complete the upgrade. Thanks, {name2}"

i already replied with my number {phone} before i read it properly lol"""),
        ("assistant", """Yes, that's a textbook scam. Red flags:

- Zelle doesn't have "pending" payments or "business upgrades". Money either arrives or it doesn't.
- Zelle support would never use an address like {email}.
- "My mover will pick it up" plus overpaying is a classic pattern.

What to do now:
1. **Don't email them** and don't send any card numbers.
2. Since they have {phone}, expect follow-up texts, including fake verification codes. Never read a code back to anyone; that's how they hijack Google Voice or WhatsApp.
3. Report the profile of "{name2}" to Facebook and block it.
4. Check your actual bank app. If there's no incoming payment there, there is no payment."""),
        ("user", "ugh ok. i did already send the first 8 digits of my card {card} to someone else last week for a different item, should i worry"),
        ("assistant", "I'd call your bank and ask for a replacement card just to be safe. Eight digits alone isn't enough to use the card, but if they got the rest from somewhere else, {card} could be misused. Ask the bank to flag the account and check recent transactions."),
    ],
    # 8 Spanish: parcel delivery problem
    [
        ("user", """Hola! El seguimiento de mi paquete dice "entregado" pero no me ha llegado nada. Es un pedido de 240€ (un móvil). Vivo en {street}, {post} {city}, y no hay buzón con mi nombre porque el portero lo quitó. Quiero reclamar a la tienda y a la empresa de mensajería. Me llamo {name}, mi tlf {phone}"""),
        ("assistant", """Vale, vamos a hacer dos reclamaciones: primero a la tienda, porque tu contrato es con ella y debe entregarte el producto.

**A la tienda:**

Asunto: Pedido no recibido, marcado como entregado

Hola,

Mi pedido [nº pedido] aparece como entregado el [fecha], pero no lo he recibido. La dirección de entrega es {street}, {post} {city}. Nadie firmó la entrega en mi nombre.

Según la normativa de consumo, el riesgo no se transmite al comprador hasta que recibe el producto, por lo que les solicito el reenvío o el reembolso íntegro de 240 €.

Quedo a la espera,
{name}
Tel. {phone}

**A la mensajería:** pide la prueba de entrega (firma, foto o geolocalización). Si no la tienen, reenvíaselo a la tienda."""),
        ("user", "y si no contestan? puedo poner tambien mi email {email} para que me escriban"),
        ("assistant", "Sí, añade «Email: {email}» debajo del teléfono. Si en un mes no responden, puedes presentar una hoja de reclamaciones o acudir a la OMIC de {city}; también puedes iniciar un contracargo en tu banco si pagaste con tarjeta."),
    ],
    # 9 Czech: utility bill overpayment
    [
        ("user", """Ahoj, dostal jsem vyúčtování za elektřinu a mám přeplatek 3 240 Kč, ale dodavatel mi ho chce převést na záloha na další rok. Já ho chci vyplatit na účet. Napíšeš mi žádost? Jsem {name}, odběrné místo {address}, zákaznické číslo (oni tomu říkají {id_kind}) {id}, účet {iban}."""),
        ("assistant", """Jasně, tady je návrh:

Věc: Žádost o vyplacení přeplatku z vyúčtování

Vážení,

dne [datum] jsem obdržel vyúčtování dodávky elektřiny pro odběrné místo {address}, ze kterého vyplývá přeplatek ve výši 3 240 Kč.

Žádám o vyplacení tohoto přeplatku bankovním převodem na účet {iban}, nikoliv o jeho převedení na zálohy.

Identifikace zákazníka: {name}, {id_kind} {id}

Děkuji a jsem s pozdravem
{name}

Podle energetického zákona musí dodavatel přeplatek vrátit do 15 dnů od vyúčtování, pokud se nedohodnete jinak. Pošli to přes zákaznický portál nebo e-mailem."""),
        ("user", "do portálu se nemůžu přihlásit, heslo mám {password} a pořád píše že je špatně"),
        ("assistant", "Heslo sem raději nepiš, a když už jsi ho napsal, po přihlášení si ho změň. Zkus „Zapomenuté heslo“. Odkaz ti přijde na e-mail uvedený ve smlouvě. Jinak můžeš žádost poslat normálně e-mailem na zákaznickou podporu a uvést {id}, to stačí k identifikaci."),
    ],
    # 10 English: SQL claims DB
    [
        ("user", """I'm cleaning up our claims table before an audit. Some rows have the full card stored which is obviously bad. Example row:

```sql
INSERT INTO claims (claim_id, claimant, email, card_number, payout_iban, status)
VALUES (88213, '{name}', '{email}', '{card}', '{iban}', 'APPROVED');
```

Write me a migration that masks card_number to the last 4 and leaves iban alone."""),
        ("assistant", """Here's a Postgres migration that keeps only the last four digits and strips spaces first, so grouped numbers like '{card}' are handled too:

```sql
BEGIN;

ALTER TABLE claims ADD COLUMN card_last4 CHAR(4);

UPDATE claims
SET card_last4 = RIGHT(REGEXP_REPLACE(card_number, '[^0-9]', '', 'g'), 4);

ALTER TABLE claims DROP COLUMN card_number;

COMMIT;
```

After running it, the row for {name} (claim 88213) will keep `payout_iban = '{iban}'` and `card_last4` set to the last four digits.

Two notes for the audit: dropping the column doesn't remove the values from old backups or WAL archives, so document the retention period. And IBANs count as personal data under GDPR too; consider encrypting payout_iban at rest."""),
        ("user", "can i also null out emails for claims closed > 7 yrs ago"),
        ("assistant", """Sure:

```sql
UPDATE claims
SET email = NULL
WHERE status IN ('APPROVED', 'REJECTED', 'CLOSED')
  AND closed_at < NOW() - INTERVAL '7 years';
```

Run a `SELECT COUNT(*)` with the same WHERE first to see how many rows it touches."""),
    ],
    # 11 German: OCR'd Finanzamt letter
    [
        ("user", """kannst du mir erklären was das Finanzamt von mir will? hab den Brief eingescannt, Text ist etwas kaputt:

Finanzamt {city}
Herrn/Frau
{name}
{address_lines}
Steuernummer: {id}
Einkommensteuer 2023
Sehr geehrte/r {surname},
bei der Bearbeitung Ihrer Einkommensteuer-
erklärung für 2023 haben sich folgende Fragen erge-
ben: Sie machen Aufwendungen für ein häusliches Ar-
beitszimmer geltend. Bitte reichen Sie einen Grund-
riss sowie eine Bescheinigung Ihres Arbeitgebers
ein, dass Ihnen kein anderer Arbeitsplatz zur Ver-
fügung steht. Frist: 4 Wochen.
Mit freundlichen Grüßen
Im Auftrag {name2}"""),
        ("assistant", """Das Finanzamt hat Rückfragen zu deinem Arbeitszimmer in der Steuererklärung 2023. Konkret möchte Sachbearbeiter/in {name2}:

1. **Einen Grundriss** der Wohnung, auf dem das Arbeitszimmer eingezeichnet ist. Eine einfache Skizze mit Maßen reicht meist.
2. **Eine Arbeitgeberbescheinigung**, dass dir kein anderer Arbeitsplatz zur Verfügung steht.

Frist ist vier Wochen ab Datum des Schreibens. Antworte schriftlich und gib immer die Steuernummer {id} an. Ein kurzes Anschreiben könnte so aussehen:

„Sehr geehrte/r {name2},
zu Ihrem Schreiben vom [Datum] zur Einkommensteuer 2023 (Steuernummer {id}) übersende ich anbei den Grundriss sowie die Bescheinigung meines Arbeitgebers.
Mit freundlichen Grüßen
{name}"

Seit 2023 gibt es alternativ die Homeoffice-Pauschale (bis 1.260 €), falls die Bescheinigung schwierig ist."""),
    ],
    # 12 English: online banking lockout, password phrasings
    [
        ("user", """my mum {name} got locked out of her online banking and asked me to sort it. she wrote down her login on a post it, it says user {email} and pw {password}. the bank wants to call her on {phone} but she's deaf in one ear and panics on the phone. what do i do"""),
        ("assistant", """A few things, in order:

1. **Don't log in as her.** Even with her permission, using her credentials breaks most banks' terms and can void fraud protection. Help her sit at the computer and do it herself.
2. **Get rid of the post-it.** Once she's back in, have her change the password from {password} to something new and keep it in a password manager or a notebook kept safe at home, not stuck to the monitor.
3. **The phone call.** Ask the bank for accessible contact: most UK banks offer Relay UK, text relay, or video call with BSL. She can also ask them to note on her profile that calls to {phone} need to be slow and clear, or that she prefers email to {email}.
4. **Longer term,** look into setting up a third-party mandate or power of attorney so you can legitimately help {first} with her accounts."""),
        ("user", "she says she also uses the same one for her email lol. the secret word they ask on the phone is her dogs name {first3}"),
        ("assistant", "Then change both: her email password and the bank one should be different, since anyone with her email can reset the bank login. And ask the bank to change the memorable word too; {first3} is probably on her Facebook."),
    ],
    # 13 Hungarian: deposit and utility at move-out
    [
        ("user", """Sziasztok, vagyis szia :) Kiköltöztem az albérletből, a főbérlő {name2} azt mondja a kaucióból levonja a gázszámlát meg a festést. Szerintem a gáz rendben van, a mérőállást lefotóztam. Írnál egy udvarias de határozott üzenetet neki? A kaució 2 havi bér, 360 000 Ft. Az én számlám: {iban}"""),
        ("assistant", """Persze, itt egy javaslat:

Kedves {name2}!

Köszönöm az együttműködést a bérlet ideje alatt. A kiköltözéskor lefotóztam a gázóra állását, a fotót csatolom. Ez alapján a gázfogyasztás elszámolása a szolgáltató végszámlája szerint történik, amelyet kérem, mutasson be, mielőtt bármit levon.

A festés a szokásos elhasználódás része, amelyet a bérlő a jogszabályok szerint nem köteles megtéríteni, hacsak a szerződés ezt kifejezetten nem írja elő.

Kérem, hogy a 360 000 Ft kauciót, illetve annak a végszámla alapján jogosan fennmaradó részét 8 napon belül utalja át a következő számlára: {iban}.

Üdvözlettel:
{name}"""),
        ("user", "oké köszi, a telefonszámom is írjam bele? {phone}"),
        ("assistant", "Igen, a név alá írhatod: „Tel.: {phone}”. Így gyorsabban egyeztethettek, de a megállapodást utána mindig írásban erősítsd meg."),
    ],
    # 14 Danish: SKAT
    [
        ("user", """Hej! Jeg har fået min årsopgørelse fra Skat og skal betale 11.400 kr. i restskat. Jeg tror de har glemt mit befordringsfradrag, jeg kører 48 km hver vej til arbejde i {city}. Hvordan retter jeg det? Jeg er {name}, {id_kind} {id}."""),
        ("assistant", """Du kan selv rette årsopgørelsen på skat.dk:

1. Log ind på TastSelv med MitID.
2. Vælg "Årsopgørelse" → "Ret årsopgørelsen".
3. Under rubrik 51 "Befordring" indtaster du dine arbejdsdage og afstanden (48 km hver vej, dvs. 96 km pr. dag). Fradraget gives for den del af den daglige transport, der ligger over 24 km.
4. Godkend, og du får en ny årsopgørelse med det samme.

Gem dokumentation (fx kørebog eller arbejdsplan), hvis Skat beder om det. Dit {id_kind} {id} skal du ikke bruge i selve rettelsen, det ligger i din MitID-login."""),
        ("user", "min kone {first2} har MitID app'en på sin telefon og jeg har bare brugt hendes kode {password} nogle gange, er det et problem?"),
        ("assistant", "Ja, det er et problem. MitID er personligt, og du må ikke logge ind med {first2}s MitID eller bruge hendes kode, heller ikke med hendes tilladelse. Få dit eget MitID (app eller kodeviser) på borger.dk eller i Borgerservice, og bed {first2} om at skifte koden, nu hvor den har været delt."),
    ],
    # 15 Portuguese (BR): used car purchase
    [
        ("user", """oi! to comprando um carro usado de um cara pela OLX, o {name2}. ele quer que eu faça um pix de sinal de R$ 2.000 pra chave dele que é o email {email} antes de ver o carro. diz que tem outro interessado. eu sou {name}, meu telefone {phone}. vale a pena?"""),
        ("assistant", """Eu não faria isso. Pedir sinal via Pix antes de você ver o carro, com pressa de "outro interessado", é um dos golpes mais comuns na OLX.

Antes de pagar qualquer coisa:
1. **Veja o carro pessoalmente** e leve um mecânico de confiança.
2. **Confira o documento (CRLV)**: o nome do proprietário tem que bater com {name2}. Se a chave Pix ({email}) for de outra pessoa, desconfie.
3. **Consulte a placa** no site do Detran do seu estado para ver multas, restrições e se há alienação fiduciária.
4. **Pague só na transferência**, de preferência no cartório, no momento do reconhecimento de firma no recibo (ATPV-e).

Se ele insistir no sinal, responda algo como: "Oi {first2}, tenho interesse sim, mas só faço pagamento depois de ver o carro e conferir a documentação. Pode me ligar no {phone} pra marcarmos." Se sumir, era golpe."""),
        ("user", "ele mandou o renavam e o cpf dele pra eu ver que é confiável: {id}"),
        ("assistant", "Ter o número dele não prova nada, golpistas usam dados de terceiros com frequência. O importante é ver se o nome no CRLV, o titular da conta Pix e a pessoa que te mostrar o carro são a mesma pessoa, com documento com foto. Não repasse {id} pra ninguém."),
    ],
    # 16 English (UK): forwarded deposit dispute email chain
    [
        ("user", """Can you help me reply to this? Forwarding the chain:

---------- Forwarded message ---------
From: {name2} <{email}>
Date: Mon, 3 Jun 2024 at 09:14
Subject: RE: Deposit return - {street}
To: {name}

Hi {first},

Following the check-out inspection we will be deducting £420 from your deposit for professional cleaning and replacement of the oven trays. The remaining £780 will be released via the DPS once you accept.

Kind regards,
{name2}
Property Manager
Tel: {phone}

> On Fri, 31 May 2024, {name} wrote:
> Hi, I moved out of {address} on the 28th, keys were left with the concierge. When can I expect my deposit back?

I cleaned the place myself and have photos. The trays were rusty when I moved in."""),
        ("assistant", """Here's a reply you can send. It's firm but keeps the door open, and it says you'll use the free DPS dispute service if needed:

Subject: RE: Deposit return - {street}

Hi {first2},

Thanks for your email. I don't accept the proposed deduction of £420.

- **Cleaning:** I cleaned the property thoroughly before leaving {address} on 28 May. Dated photos are attached. Under the tenancy agreement I must return it in the same condition as at check-in, not to a professional standard.
- **Oven trays:** the trays were already rusted at the start of the tenancy. Please check the check-in inventory; if it doesn't record their condition, a deduction isn't justified, and fair wear and tear applies in any case.

Please release the full £1,200. If we can't agree, I'll raise a dispute through the DPS adjudication service.

Kind regards,
{name}

Keep all communication in writing. If {first2} calls you on {phone}, follow up with an email summarising what was said."""),
    ],
    # 17 English: CSV for expense reimbursement
    [
        ("user", """Need a quick python script to turn this csv into SEPA payment instructions for our volunteer expense reimbursements. header + first rows:

```
payee,email,iban,amount_eur,reason
{name},{email},{iban},84.20,train tickets Berlin
{name2},,,31.00,printing flyers
"{surname}, {first3}",,{iban},12.50,coffee for stand
```"""),
        ("assistant", """Here's a script that reads the CSV and builds a minimal pain.001 credit-transfer list as a Python structure. Swap in your bank's XML export afterwards:

```python
import csv
from decimal import Decimal

def load_payments(path):
    payments = []
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            iban = row["iban"].replace(" ", "").upper()
            payments.append({{
                "name": row["payee"].strip(),
                "iban": iban,
                "amount": Decimal(row["amount_eur"]),
                "remittance": row["reason"][:140],
            }})
    return payments

for p in load_payments("expenses.csv"):
    print(f"{{p['name']:<30}} {{p['iban']}} {{p['amount']:>8}}")
```

A few things I noticed in your data:
- Rows 1 and 3 have the same IBAN ({iban}) but different payees ({name} and "{surname}, {first3}"). Is that intentional, e.g. a shared household account? Most banks will still pay, but it's worth double-checking.
- {name2} has no email and no IBAN, so that row will fail. You'll need to ask them for bank details before the run.
- The quoted name "{surname}, {first3}" is handled by `csv`, but flip it to first-last order before sending to the bank."""),
    ],
    # 18 English: chargeback API JSON with address_qq
    [
        ("user", """our payment provider's dispute API returns this, and the billing address comes through mangled. how do i split it back into lines?

```json
{{
  "dispute_id": "dp_3NxK81",
  "reason": "product_not_received",
  "cardholder": "{name}",
  "card": "{card}",
  "billing_address": "{address_qq}",
  "contact": {{"email": "{email}", "phone": "{phone}"}}
}}
```"""),
        ("assistant", """The `???` is almost certainly where line breaks were lost in an encoding step (often a CR/LF that got replaced during a charset conversion). Split on it:

```python
import json

data = json.loads(raw)
lines = [part.strip() for part in data["billing_address"].split("???") if part.strip()]
street, post_city, country = (lines + ["", "", ""])[:3]
```

For this dispute that gives you:

```
{address_lines}
```

Better to fix it upstream, though: ask the provider whether the field is meant to be UTF-8 with `\\n` separators. Also, that payload contains the full card number ({card}) for {name}. A dispute API should return at most the last four digits, so if you're logging these responses you're storing PANs, which puts your logs in PCI scope. Mask `card` before logging."""),
    ],
    # 19 English: Slack-like with system turn, utility billing support
    [
        ("system", "You are the internal assistant in the #billing-support Slack channel of a regional energy supplier. Help agents draft replies to customers. Keep replies short and friendly."),
        ("user", """@assistant customer {name} says we charged them twice for April. account {id}, supply address {address_lower}. they want the refund on their card {card}, but we only refund to the payment method on file which is direct debit. can you draft a reply. their email is {email}"""),
        ("assistant", """Here's a draft:

Hi {first},

Thanks for getting in touch, and sorry about the double charge for April on account {id}.

I've checked your account and can confirm the April payment was taken twice. For security reasons we can only refund to the payment method on file, which for your account is your Direct Debit, so the duplicate amount will go back to that bank account within 3-5 working days rather than to your card.

If you've since changed bank accounts, just reply to this email and we'll update your details before processing the refund.

Best wishes,
[Agent name]
Customer Billing Team

I'd leave the card number out of the reply entirely. Also, since they sent the full card in their message, maybe redact it in the ticket."""),
        ("user", "thx. @{first_lower} can you pick this up, it's in the queue under {surname}"),
    ],
    # 20 Spanish: Renta, NIF, Cl@ve
    [
        ("user", """Estoy haciendo la declaración de la renta con Renta WEB y me sale a pagar 650€. Este año estuve 4 meses cobrando el paro y el resto trabajando en una empresa de {city}. Es normal? Mi {id_kind} es {id} por si hace falta. Por cierto la clave pin no me llega, el usuario de cl@ve lo tengo con la contraseña {password}"""),
        ("assistant", """Sí, es bastante habitual. Cuando en un mismo año tienes dos pagadores (el SEPE y la empresa), cada uno te retiene como si fuera el único, y al sumarlo todo las retenciones se quedan cortas. Además, con dos pagadores el límite para estar obligado a declarar baja a 15.876 € si el segundo pagador supera 1.500 €.

Cosas que puedes revisar antes de confirmar:
- Que los datos del SEPE y de la empresa estén bien en el borrador.
- Deducciones autonómicas (alquiler, gastos de guardería, etc.).
- Si estás casado/a, simula también la declaración conjunta.

Si sale a pagar, puedes fraccionarlo: 60 % ahora y 40 % en noviembre, sin intereses.

Sobre el acceso: no hace falta que compartas la contraseña {password} ni aquí ni con nadie; cámbiala en cuanto puedas. Si el PIN no llega, comprueba que el móvil registrado en Cl@ve es el correcto, o entra con el número de referencia usando tu {id_kind} {id} y la casilla 505 de la declaración del año pasado."""),
        ("user", "vale gracias. mi gestor {name2} dice que lo haga conjunta con mi pareja {first3}"),
        ("assistant", "Puede compensar si {first3} tuvo ingresos bajos o nulos: la conjunta aplica una reducción de 3.400 €. Haz las dos simulaciones en Renta WEB y quédate con la que salga mejor; lo que te diga {name2} seguramente se basa en eso."),
    ],
    # 21 Polish: InPost parcel complaint
    [
        ("user", """hej, paczka z Allegro utknęła w paczkomacie który był zepsuty, potem status "zwrot do nadawcy". Sprzedawca mówi że to nie jego problem. Chcę złożyć reklamację w InPost. Dane: {name}, tel {phone}, mail {email}, adres dostawy {address}."""),
        ("assistant", """Jasne. Reklamację do InPost złożysz przez formularz na stronie albo w aplikacji. Tekst możesz wkleić taki:

Temat: Reklamacja usługi – przesyłka zwrócona do nadawcy z powodu awarii paczkomatu

Dzień dobry,

składam reklamację dotyczącą przesyłki nr [numer przesyłki]. Przesyłka miała zostać doręczona do paczkomatu [kod paczkomatu], który w dniach [daty] był niesprawny, przez co nie mogłem/mogłam jej odebrać. Następnie status zmienił się na „zwrot do nadawcy”, bez możliwości przekierowania.

Wnoszę o ponowne doręczenie przesyłki na adres {address} lub o pokrycie kosztów ponownej wysyłki.

Dane kontaktowe:
{name}
tel. {phone}
e-mail: {email}

Z poważaniem,
{name}

Równolegle otwórz dyskusję w Allegro: sprzedawca odpowiada wobec Ciebie do chwili wydania towaru, więc to jednak też jego problem."""),
    ],
    # 22 Italian: home insurance claim, lower-case, card for excess
    [
        ("user", """ciao mi si è allagato il bagno per un tubo rotto e l'acqua è scesa al piano di sotto dalla signora {name2}. ho la polizza casa con responsabilità civile. devo fare denuncia di sinistro, mi aiuti? sono {name_lower}, {address_lower}. la franchigia di 150 la pagano con la carta {card} dice l'agente"""),
        ("assistant", """Certo. Ecco un testo per la denuncia di sinistro da mandare alla compagnia (o all'agente) via PEC o raccomandata:

Oggetto: Denuncia di sinistro – danni da acqua e responsabilità civile verso terzi
Polizza n. [numero polizza]

Il/La sottoscritto/a {name}, residente in {address}, comunica che in data [data] si è verificata la rottura di una tubazione nel bagno della propria abitazione, con conseguente allagamento e infiltrazioni nell'appartamento sottostante, di proprietà della sig.ra {name2}.

Si chiede pertanto l'attivazione delle garanzie "danni da acqua" e "responsabilità civile" previste dalla polizza e l'invio di un perito.

Si allegano: foto dei danni, fattura dell'idraulico.

Distinti saluti
{name}

La denuncia va fatta entro 3 giorni da quando te ne sei accorto (art. 1913 c.c.). Per la franchigia: non serve scrivere il numero della carta nella denuncia, la gestisce l'agente quando liquida."""),
        ("user", "la sig.ra {surname}... no scusa, la {name2} vuole il mio numero di polizza e il telefono, glielo posso dare?"),
        ("assistant", "Sì, è normale: le servono per aprire la richiesta di risarcimento con la tua compagnia. Dalle il numero di polizza e il nome della compagnia; il telefono è facoltativo. Non dare dati della carta."),
    ],
    # 23 English: UK spouse visa, markdown table of address history
    [
        ("user", """doing the uk spouse visa form for my wife and it wants address history for the last 2 yrs. can you format this as a table i can copy from:
- {address}, {country}, from jan 2022 to now, owned with {name2}
- before that lived with her parents in {city}
her passport no. is {id}, and my phone is {phone} for the sponsor section. my name {name}"""),
        ("assistant", """Here's a table you can copy:

| # | Address | Country | From | To | Tenure |
|---|---------|---------|------|----|--------|
| 1 | {address} | {country} | 01/2022 | present | Owned (jointly with {name2}) |
| 2 | [parents' street address], {city} | [country] | [month/year] | 12/2021 | Living with family |

Sponsor details:

| Field | Value |
|-------|-------|
| Sponsor name | {name} |
| Sponsor phone | {phone} |
| Applicant passport number | {id} |

A couple of tips:
- The form wants the full address for row 2, not just the city, so ask her parents for the exact one.
- Use the same spelling of {name} as in your passport across the whole application. Small differences can trigger extra checks.
- Keep scans of the mortgage statement for {address}. They count as evidence that you live together."""),
    ],
    # 24 English: expat selling on Kleinanzeigen, password phrasing
    [
        ("user", """selling my bike on kleinanzeigen (i'm in germany, my german is terrible). buyer wrote:

"Hallo, ich nehme das Fahrrad für 350. Ich schicke Ihnen das Geld per Kleinanzeigen 'Sicher bezahlen', bitte bestätigen Sie über den Link und geben Sie Ihre Kartendaten ein. Gruß {name2}"

then a link came via whatsapp to {phone}. i clicked and put in my email {email} and the password i use for everything, which is {password}. didn't get to the card part. am i screwed?"""),
        ("assistant", """Not screwed, but act now. That was a phishing site, not the real "Sicher bezahlen". The real feature never asks a seller for card details, and it never goes through WhatsApp.

Do this right away, in this order:
1. **Change your email password** for {email}, since that's the key to everything else. Use something new, not a variation of {password}.
2. **Change the Kleinanzeigen password** and every other account where you reused it. Start with banking, PayPal and Amazon.
3. **Turn on two-factor authentication** on your email and PayPal.
4. **Report the buyer** "{name2}" on Kleinanzeigen and block the WhatsApp number.

A short reply in German if you want to shut it down:
"Nein danke, nur Barzahlung bei Abholung." ("No thanks, cash on pickup only.")

If you get a login alert on any account in the next days, tell me which and I'll help you with the next steps."""),
        ("user", "ok changed it. the bike is with my flatmate {first3} at {street}, can i just let her handle the cash pickup"),
        ("assistant", "Sure. Cash on pickup is the safest way on Kleinanzeigen. Have {first3} count the money and check the 50s and 100s before handing over the bike, and don't post the address {street} in the chat until a real buyer has agreed on a time."),
    ],
]


# Held-out chat templates, set 31: health, school and travel.
HELD_OUT_31_TEMPLATES: list[list[tuple[str, str]]] = [
    # 1 doctor's appointment reschedule
    [
        ("user", """hey can you write a short email to my GP's office, i need to move my appointment from thursday to next week sometime. my name is {name}, date of birth is on file. they can call me on {phone} or reply to {email}"""),
        ("assistant", """Of course! Here's a short email you can send:

Subject: Request to reschedule appointment

Dear Reception Team,

I have an appointment booked for this Thursday, but unfortunately I'm no longer able to attend. Could you please move it to a suitable slot next week?

You can reach me on {phone} or by replying to {email}.

Thank you very much,
{name}"""),
        ("user", """perfect thx. also add that my address changed, its now {address}"""),
        ("assistant", """Sure, just add this line before the sign-off:

"Please also note that my address has changed. My new address is {address}."

Everything else can stay as it is."""),
    ],
    # 2 German health insurance reimbursement
    [
        ("user", """Hallo, ich muss bei meiner Krankenkasse eine Rechnung zur Erstattung einreichen (Physiotherapie, 6 Sitzungen). Kannst du mir ein kurzes Anschreiben formulieren? Name: {name}, Versichertennummer {id}, Erstattung bitte auf IBAN {iban}."""),
        ("assistant", """Gern, hier ein Vorschlag:

{name}
{address_lines}

Betreff: Antrag auf Kostenerstattung – Physiotherapie (6 Behandlungen)
Versichertennummer: {id}

Sehr geehrte Damen und Herren,

anbei übersende ich Ihnen die Rechnung über sechs Physiotherapie-Sitzungen mit der Bitte um Erstattung. Die ärztliche Verordnung liegt ebenfalls bei.

Bitte überweisen Sie den Erstattungsbetrag auf folgendes Konto:
IBAN: {iban}
Kontoinhaber: {name}

Mit freundlichen Grüßen
{name}"""),
        ("user", """Danke! Die Adresse oben passt so. Muss ich die IBAN wirklich ausschreiben oder reicht es, wenn die schon hinterlegt ist?"""),
        ("assistant", """Wenn die Bankverbindung bei der Kasse schon hinterlegt ist, reicht meist ein Satz wie „Bitte auf das hinterlegte Konto überweisen“. Falls du unsicher bist, ob {iban} noch aktuell gespeichert ist, schreib sie lieber mit rein – das vermeidet Rückfragen."""),
    ],
    # 3 pharmacy refill, lowercase, typos
    [
        ("user", """hi im {first_lower}, i need to call the pharmacy abt my prescripton refil (metformin 500mg) but i hate phone calls lol. can u write a text i can send them? my numbr is {phone} and i live at {address_lower} if they deliver"""),
        ("assistant", """Haha, totally understandable! Here's a text you could send:

"Hi, this is {first} – I'd like to request a refill of my metformin 500mg prescription. If you offer delivery, my address is {address_lower}. Please text or call me at {phone} if you need anything else from me. Thanks!"

You might also want to include your date of birth, since pharmacies often use it to find your record."""),
        ("user", """ok ty, the last name is {surname} btw if that matters"""),
        ("assistant", """It does help! Just change the first line to: "Hi, this is {name} – I'd like to request a refill..." That way they can find your file straight away."""),
    ],
    # 4 school enrolment JSON
    [
        ("user", """I'm building a little script to prefill the school enrolment form for my daughter. Can you check if this JSON looks right?

{{
  "student": {{"first_name": "{first3}", "last_name": "{surname}", "grade": 3}},
  "guardian": {{"name": "{name}", "phone": "{phone}", "email": "{email}"}},
  "address": {{"street": "{street}", "postcode": "{post}", "city": "{city}", "country": "{country}"}}
}}"""),
        ("assistant", """The JSON is valid. A few suggestions:

1. Schools usually want a second emergency contact, so you could add a `"guardian2"` object.
2. `"grade"` is fine as a number, but check whether the form expects a string like `"3"`.
3. Consider adding `"date_of_birth"` for {first3}.

Here's an extended version:

```json
{{
  "student": {{"first_name": "{first3}", "last_name": "{surname}", "grade": 3, "date_of_birth": "YYYY-MM-DD"}},
  "guardian": {{"name": "{name}", "phone": "{phone}", "email": "{email}"}},
  "guardian2": {{"name": "{name2}", "phone": "", "email": ""}},
  "address": {{"street": "{street}", "postcode": "{post}", "city": "{city}", "country": "{country}"}}
}}
```"""),
        ("user", """nice, yes {first2} is the second contact, good guess"""),
    ],
    # 5 French parent-teacher message
    [
        ("user", """Bonjour, peux-tu m'aider à écrire un message à l'institutrice de mon fils ? Elle s'appelle {name2}. Mon fils {first3} sera absent lundi et mardi pour un rendez-vous chez l'orthodontiste. Je signe {name}."""),
        ("assistant", """Bien sûr, voici une proposition :

Bonjour Madame {name2},

Je vous informe que {first3} sera absent lundi et mardi prochains en raison d'un rendez-vous chez l'orthodontiste. Pourriez-vous, si possible, me transmettre les devoirs à faire pendant ces deux jours ?

N'hésitez pas à me contacter au {phone} ou par e-mail à {email}.

Cordialement,
{name}"""),
        ("user", """Super merci. Elle préfère qu'on l'appelle par son prénom, {first2}, tu peux adapter ?"""),
        ("assistant", """Bien sûr ! Remplace simplement la première ligne par « Bonjour {first2}, » – le reste du message peut rester identique."""),
    ],
    # 6 forwarded flight confirmation
    [
        ("user", """---------- Forwarded message ---------
From: Booking Confirmation <noreply@flights-booking.example>
Subject: Your e-ticket receipt

Passenger: {name}
Passport: {id}
Contact: {email} / {phone}
Paid with card ending in {card}

can you tell me if i need to add the passport details again at check-in or is that already done? this is for my trip to {country} next month"""),
        ("assistant", """It looks like your passport number ({id}) is already attached to the booking, so in most cases you won't need to enter it again. However, many airlines ask you to confirm the advance passenger information (API) during online check-in, especially for international trips to {country}.

I'd suggest:
- Logging in to the airline's "Manage booking" section with your booking reference and surname ({surname}).
- Checking that the name matches your passport exactly: {name}.
- Confirming the passport expiry date, since that's often missing.

Also, your email shows the full card number ({card}) – you may want to avoid forwarding that message around."""),
    ],
    # 7 Spanish hotel booking
    [
        ("user", """Hola! Necesito escribir al hotel para cambiar la reserva de 2 a 3 noches. La reserva está a nombre de {name}, pagué con la tarjeta {card}. Mi teléfono es {phone}. ¿Me ayudas con un correo corto?"""),
        ("assistant", """¡Claro! Aquí tienes un borrador:

Asunto: Modificación de reserva – {name}

Estimados señores:

Tengo una reserva a nombre de {name} para dos noches y me gustaría ampliarla a tres noches, si hay disponibilidad. Pueden cargar la noche adicional en la misma tarjeta con la que realicé el pago ({card}).

Para cualquier consulta, pueden contactarme en el {phone} o en {email}.

Muchas gracias y un saludo,
{first}"""),
        ("user", """genial, pero mejor no pongo el número entero de la tarjeta no?"""),
        ("assistant", """Buena idea. Es más seguro poner solo "la tarjeta utilizada en la reserva" o los últimos cuatro dígitos. El hotel ya tiene los datos completos, así que no hace falta enviarlos por correo."""),
    ],
    # 8 Italian visa application letter
    [
        ("user", """Ciao, devo preparare una lettera di accompagnamento per la domanda di visto. Dati: {name}, residente in {address}, {country}. Numero di passaporto {id}. Il viaggio è per turismo, 2 settimane ad agosto."""),
        ("assistant", """Ecco una bozza:

{name}
{address_lines}

Oggetto: Domanda di visto turistico

Gentili Signori,

con la presente desidero richiedere un visto turistico per un soggiorno di due settimane nel mese di agosto. Allego alla domanda il passaporto n. {id}, la prenotazione del volo e dell'alloggio, nonché un estratto conto bancario.

Durante il soggiorno sarò reperibile al numero {phone} e all'indirizzo e-mail {email}.

Distinti saluti,
{name}"""),
        ("user", """Perfetto. Mia sorella {name2} viaggia con me, devo aggiungerla?"""),
        ("assistant", """Sì, è consigliabile. Puoi aggiungere una frase come: "Viaggerò insieme a mia sorella, {name2}, che presenta una domanda separata." In genere ogni richiedente deve comunque compilare la propria domanda."""),
    ],
    # 9 Polish car rental dispute
    [
        ("user", """Cześć, wypożyczalnia samochodów obciążyła moją kartę {card} dodatkową kwotą 450 zł za rzekome zarysowanie. Samochód oddałem bez uszkodzeń, mam zdjęcia. Pomożesz napisać reklamację? Jestem {name}, adres {address}, tel. {phone}."""),
        ("assistant", """Jasne, oto propozycja reklamacji:

{name}
{address}
tel. {phone}

Reklamacja – nieuzasadnione obciążenie karty

Szanowni Państwo,

w dniu zwrotu pojazdu nie stwierdzono żadnych uszkodzeń, co potwierdzają wykonane przeze mnie zdjęcia (w załączeniu). Mimo to moja karta płatnicza ({card}) została obciążona kwotą 450 zł z tytułu rzekomego zarysowania.

Wnoszę o zwrot tej kwoty w terminie 14 dni. W przeciwnym razie zgłoszę reklamację transakcji w moim banku (chargeback).

Z poważaniem,
{name}"""),
        ("user", """dzieki, a mozna dodac ze {first2} byl przy zwrocie auta jako swiadek?"""),
        ("assistant", """Oczywiście. Dodaj przed ostatnim akapitem: „Przy zwrocie pojazdu obecny był również {name2}, który może potwierdzić jego stan.”"""),
    ],
    # 10 lost luggage, exported address with ???
    [
        ("user", """my bag never showed up at the carousel. the airline's form exported my details like this, is this ok to send?

Name: {name}
Delivery address: {address_qq}
Phone: {phone}
Email: {email}"""),
        ("assistant", """The "???" are just where line breaks were lost in the export, so the airline will probably still understand it, but it's safer to fix it before sending. Your delivery address should read:

{address_lines}

For the claim, also include:
- Your bag tag number (on the sticker on your boarding pass)
- A description of the bag (colour, brand, size)
- Your flight number and date

Contact details: {name}, {phone}, {email}."""),
        ("user", """ok. also the portal asked me to make a login, i used {password} lol is that fine"""),
        ("assistant", """It works, but I'd recommend not reusing a password you use elsewhere. If "{password}" is also your email or banking password, change it on the airline portal to something unique, ideally generated by a password manager."""),
    ],
    # 11 Python patient records (system turn)
    [
        ("system", """You are a helpful coding assistant for a small physiotherapy clinic."""),
        ("user", """why does this crash with KeyError?

```python
patients = [
    {{"name": "{name}", "phone": "{phone}", "email": "{email}"}},
    {{"name": "{name2}", "phone": "{phone}"}},
]

for p in patients:
    print(p["name"], p["email"])
```"""),
        ("assistant", """The second dictionary (for {name2}) has no `"email"` key, so `p["email"]` raises a `KeyError`. Use `.get()` with a default:

```python
for p in patients:
    print(p["name"], p.get("email", "no email on file"))
```

This prints `{name} {email}` for the first patient and `{name2} no email on file` for the second."""),
    ],
    # 12 SQL insurance claims
    [
        ("user", """writing a quick insert for our claims db, is the syntax right?

INSERT INTO claims (claimant_name, policy_holder, id_type, id_value, payout_iban, amount)
VALUES ('{name}', '{name2}', '{id_kind}', '{id}', '{iban}', 1240.50);"""),
        ("assistant", """The syntax is correct. A couple of notes:

- If `{name}` could contain an apostrophe (e.g. O'Brien), you should use parameterised queries instead of string literals.
- Storing the `{id_kind}` value `{id}` and the IBAN `{iban}` in plain text may violate your data-protection policy; consider encrypting those columns.

Parameterised version (Python + psycopg):

```python
cur.execute(
    "INSERT INTO claims (claimant_name, policy_holder, id_type, id_value, payout_iban, amount) VALUES (%s, %s, %s, %s, %s, %s)",
    ("{name}", "{name2}", "{id_kind}", "{id}", "{iban}", 1240.50),
)
```"""),
    ],
    # 13 YAML school portal config
    [
        ("user", """my kid's school portal scraper config isn't loading, getting a yaml error on line 4

```yaml
portal:
  url: https://portal.school.example/login
  username: {email}
  password: {password}:
  student: {first3} {surname}
```"""),
        ("assistant", """The problem is the trailing `:` after the password on line 4 – YAML reads it as a nested mapping. Remove it, and quote the password in case it has special characters:

```yaml
portal:
  url: https://portal.school.example/login
  username: {email}
  password: "{password}"
  student: "{first3} {surname}"
```

Also, it's better not to store the password in the file directly. You could use an environment variable, e.g. `password: ${{PORTAL_PASSWORD}}` and load it in your script."""),
    ],
    # 14 shell curl to booking portal
    [
        ("user", """this curl to the hotel booking api keeps giving 401:

curl -X POST https://api.booking.example/v2/reservations \\
  -u "{email}:{password}" \\
  -H "Content-Type: application/json" \\
  -d '{{"guest": "{name}", "phone": "{phone}", "nights": 3}}'"""),
        ("assistant", """A 401 means the credentials were rejected. Things to check:

1. Many booking APIs don't accept account passwords, only API keys. Check whether you need a token instead of `{email}:{password}`.
2. If the password contains `$` or `!`, the shell may mangle it even inside double quotes. Try single quotes: `-u '{email}:{password}'`.
3. Make sure the endpoint is `/v2/` for your account.

The JSON body (`"guest": "{name}"`, `"phone": "{phone}"`) looks fine."""),
    ],
    # 15 CSV school trip chaperones
    [
        ("user", """Can you turn this into a table for the school trip newsletter? Parents volunteering as chaperones:

name,phone,email
{name},{phone},{email}
{name2},,
{first3} (no surname given),,"""),
        ("assistant", """Here you go:

| Chaperone | Phone | Email |
|---|---|---|
| {name} | {phone} | {email} |
| {name2} | – | – |
| {first3} | – | – |

You may want to ask {first2} and {first3} for contact details before the newsletter goes out, and check that {first} is happy to have their number published."""),
        ("user", """good point, i'll just put "contact the office" instead of {first}'s number"""),
    ],
    # 16 markdown itinerary
    [
        ("user", """help me make a markdown itinerary for our family trip. we fly out on the 12th, staying at an airbnb at {street} in {city} ({post}), host is {name2}. i'm {name}, my partner is {first3}."""),
        ("assistant", """# Family Trip to {city}

**Travellers:** {name}, {first3}

## Accommodation
| | |
|---|---|
| Address | {street}, {post} {city} |
| Host | {name2} |
| Check-in | 12th, from 15:00 (confirm with {first2}) |

## Day by day
- **12th:** Flight out, check in at {street}
- **13th:** Explore {city} old town
- **14th:** Day trip (TBD)

## Emergency contacts
- Host: {name2}
- Local emergency number: 112"""),
        ("user", """add my phone {phone} under emergency contacts too pls"""),
        ("assistant", """Done:

## Emergency contacts
- Host: {name2}
- {name}: {phone}
- Local emergency number: 112"""),
    ],
    # 17 Dutch GP appointment
    [
        ("user", """Hoi! Kun je een berichtje voor de huisarts schrijven? Ik wil een afspraak maken voor mijn zoontje {first3}, hij heeft al een week koorts. Mijn naam is {name}, telefoon {phone}. We zijn net verhuisd naar {address}, dus dat moeten ze ook aanpassen."""),
        ("assistant", """Natuurlijk, hier is een voorstel:

Beste assistente,

Graag wil ik een afspraak maken voor mijn zoon {first3}. Hij heeft inmiddels een week koorts en ik maak me een beetje zorgen.

Daarnaast wil ik mijn adreswijziging doorgeven. Ons nieuwe adres is {address}.

U kunt mij bereiken op {phone}.

Met vriendelijke groet,
{name}"""),
        ("user", """top, dank je! moet het niet "{first3} {surname}" zijn zodat ze hem kunnen vinden?"""),
        ("assistant", """Goed punt, dat maakt het makkelijker. Schrijf dan: "Graag wil ik een afspraak maken voor mijn zoon {first3} {surname}." Zijn geboortedatum erbij zetten helpt ook."""),
    ],
    # 18 Portuguese travel insurance claim
    [
        ("user", """Oi, preciso acionar o seguro viagem porque fiquei doente em {city} e paguei a consulta do meu bolso. Pode me ajudar com o e-mail pra seguradora? Nome: {name}, e-mail {email}, conta pra reembolso IBAN {iban}. Meu {id_kind}: {id}"""),
        ("assistant", """Claro! Segue uma sugestão:

Assunto: Solicitação de reembolso – despesas médicas no exterior

Prezados,

Meu nome é {name} ({id_kind}: {id}) e sou segurado(a) pela apólice de seguro viagem contratada com vocês. Durante minha viagem, precisei de atendimento médico em {city} e arquei com os custos da consulta.

Envio em anexo o recibo e o relatório médico, e solicito o reembolso na seguinte conta:
IBAN: {iban}
Titular: {name}

Fico à disposição pelo e-mail {email}.

Atenciosamente,
{name}"""),
    ],
    # 19 Czech school lunch payment
    [
        ("user", """Ahoj, potřebuju napsat e-mail do školní jídelny. Platím obědy pro dceru {first3} a platba se asi ztratila. Poslala jsem to z účtu {iban}, jméno {name}. Můžeš mi to napsat slušně?"""),
        ("assistant", """Jasně, tady je návrh:

Dobrý den,

dovoluji si Vás kontaktovat ohledně platby za obědy mé dcery {first3} {surname}. Platbu jsem odeslala z účtu {iban}, ale podle všeho nebyla připsána.

Mohli byste prosím ověřit, zda platba dorazila? V případě potřeby Vám ráda pošlu potvrzení z banky.

Děkuji a s pozdravem
{name}
tel.: {phone}"""),
        ("user", """díky, jen ten telefon je jinak, dej tam radši email {email}"""),
        ("assistant", """Není problém, poslední řádek tedy bude:

{name}
e-mail: {email}"""),
    ],
    # 20 Hungarian airbnb wifi / address
    [
        ("user", """Szia! Vendégeknek írok egy üdvözlő üzenetet a szállásunkhoz. A cím {address}, a wifi neve "Vendeg_5G", jelszó: {password}. A házigazda én vagyok, {name}. Megírod magyarul és angolul is?"""),
        ("assistant", """Persze! Íme:

**Magyarul:**
Kedves Vendégeink!
Szeretettel köszöntünk benneteket! A szállás címe: {address}.
Wifi: Vendeg_5G – jelszó: {password}
Ha bármire szükségetek van, keressetek bátran a {phone} számon.
Üdv, {name}

**In English:**
Dear guests,
Welcome! The address is {address}.
Wi-Fi: Vendeg_5G – password: {password}
If you need anything, feel free to call me on {phone}.
Best, {first}"""),
        ("user", """a telefonszámot honnan tudtad? :D mindegy, jó, az a {phone}"""),
    ],
    # 21 Danish prescription / health card
    [
        ("user", """Hej, jeg skal hente medicin for min mor på apoteket, men hun kan ikke selv komme. Hvad skal jeg have med? Hun hedder {name2}, og jeg er {name}. Hendes CPR/{id_kind} er {id}."""),
        ("assistant", """For at hente receptpligtig medicin for en anden skal du typisk have:

1. **En fuldmagt** fra {name2} (eller hun kan give dig adgang digitalt).
2. **Hendes sundhedskort** eller hendes nummer ({id}).
3. **Dit eget ID**, så apoteket kan se, at du er {name}.

Her er en kort fuldmagt, du kan bruge:

"Jeg, {name2}, giver hermed {name} tilladelse til at afhente min receptmedicin på apoteket.
Dato og underskrift: ____________"

Ring evt. først til apoteket, så de kan have medicinen klar. Skriv dit nummer {phone} på sedlen, så de kan kontakte dig."""),
    ],
    # 22 insurance adjuster with signature (system turn)
    [
        ("system", """You are an assistant that helps users draft professional emails."""),
        ("user", """Please tidy up this reply to a customer's claim and keep my signature as it is:

hi, we got ur claim for the hospital stay, need the discharge letter + invoices before we can pay out to {iban}. thx

--
{name}
Claims Handler | Health & Travel Insurance
{address_lines}
T: {phone}
E: {email}"""),
        ("assistant", """Here's a cleaned-up version:

Dear customer,

Thank you for submitting your claim regarding your recent hospital stay. Before we can process the payment to the account provided ({iban}), we will need the following documents:

- The discharge letter from the hospital
- All related invoices

Once we receive these, we will process your claim as quickly as possible.

Kind regards,

--
{name}
Claims Handler | Health & Travel Insurance
{address_lines}
T: {phone}
E: {email}"""),
    ],
    # 23 dictated numbers, card and password on phone
    [
        ("user", """i'm on the phone with the dental clinic to pay the deposit and they're asking me to read out my card. is it normal? i said "four digits at a time" and read {card}, expiry oh-eight slash two seven. they also asked for my patient portal password which is {password}"""),
        ("assistant", """Reading out your card number ({card}) to pay a deposit over the phone is fairly common, as long as you called the clinic's official number yourself.

However, **no legitimate clinic should ask for your patient portal password**. Staff never need it to take a payment. Since you've shared "{password}", I'd recommend:

1. Changing your portal password right away.
2. Checking your card statement for unexpected charges.
3. If the call came from them (not you), phone the clinic back on the number from their website and ask if the request was real.

If you like, I can help you write a short message to the clinic asking about it."""),
        ("user", """yes pls, i'm {name}, my number for callbacks is {phone}"""),
        ("assistant", """Here you go:

"Hello, this is {name}. Earlier today I paid a deposit by phone and was asked for my patient portal password. Could you confirm whether this request came from your clinic? Please call me back on {phone}. Thank you."""),
    ],
    # 24 names as subject / possessive / punctuation (system turn)
    [
        ("system", """You are a travel planning assistant."""),
        ("user", """ugh. {name}'s connecting flight got cancelled and now {first2} and I are stuck at the airport too. {name2} has the hotel booking under her name, I only have my {id_kind} ({id}) and {first}'s phone number: {phone}. what do we do first?"""),
        ("assistant", """Sorry, that sounds stressful! Here's what to do, in order:

1. **Rebooking:** {first} should go to the airline desk (or use the app) straight away. Since it's the airline's cancellation, they have to rebook free of charge and, depending on the delay, provide meals or a hotel.
2. **Hotel:** Ask {first2} to call the hotel and let them know you'll arrive late, so the room under {name2}'s name isn't given away as a no-show.
3. **Stay reachable:** Keep {first}'s number ({phone}) handy in case you get split up.
4. **Documents:** Keep your {id_kind} ({id}) and boarding passes with you; you'll need them for rebooking and any compensation claim.

Want me to draft a compensation claim for {name} once you're rebooked?"""),
        ("user", """yes, later. thanks!! — {first3}"""),
    ],
]


TEMPLATES = {
    "tune": TUNE_TEMPLATES
    + HELD_OUT_TEMPLATES
    + HELD_OUT_3_TEMPLATES
    + HELD_OUT_4_TEMPLATES
    + HELD_OUT_5_TEMPLATES
    + HELD_OUT_6_TEMPLATES
    + HELD_OUT_7_TEMPLATES
    + HELD_OUT_8_TEMPLATES
    + HELD_OUT_9_TEMPLATES
    + HELD_OUT_10_TEMPLATES
    + HELD_OUT_11_TEMPLATES
    + HELD_OUT_12_TEMPLATES
    + HELD_OUT_13_TEMPLATES
    + HELD_OUT_14_TEMPLATES
    + HELD_OUT_15_TEMPLATES
    + HELD_OUT_16_TEMPLATES
    + HELD_OUT_17_TEMPLATES
    + HELD_OUT_18_TEMPLATES
    + HELD_OUT_19_TEMPLATES
    + HELD_OUT_20_TEMPLATES
    + HELD_OUT_21_TEMPLATES
    + HELD_OUT_22_TEMPLATES
    + HELD_OUT_23_TEMPLATES
    + HELD_OUT_24_TEMPLATES
    + HELD_OUT_25_TEMPLATES
    + HELD_OUT_26_TEMPLATES
    + HELD_OUT_27_TEMPLATES
    + HELD_OUT_28_TEMPLATES
    + HELD_OUT_29_TEMPLATES
    + HELD_OUT_30_TEMPLATES,
    "held-out": HELD_OUT_31_TEMPLATES,
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
    # Faker's it_IT address provider builds its city list from a set, whose order changes with the
    # process's hash seed: sorted, a seed gives the same conversations in every process
    for provider in fakers["it_IT"].get_providers():
        if isinstance(getattr(provider, "cities", None), list):
            provider.cities = sorted(provider.cities)
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
        # not inside another number, nor a decimal ("quality_score": 0.8764 is no postcode 8764)
        whole_post = re.search(rf"(?<![\w-])(?<!\d[.,]){re.escape(post.casefold())}(?![\w-])(?![.,]\d)", low)
        return " ".join(street.split()).casefold() in low or (len(post) >= 4 and whole_post is not None)
    if kind in ("card", "phone", "iban", "id") and sum(ch.isdigit() for ch in value) >= 6:
        return re.sub(r"[^\d]", "", value) in digits_only or value.casefold() in low
    return value.casefold() in low


def _fold(text: str) -> tuple[str, str, set[str]]:
    """Lower-cased text, its numbers (each run of digits and separators as its digits, "|" between
    runs: digits of neighbouring numbers must not join into a planted one), and its words."""
    low = " ".join(text.split()).casefold()
    numbers = "|".join(re.sub(r"\D", "", run) for run in re.findall(r"[\d+(][\d \t\-.()/+x]*", text))
    return low, numbers, set(re.findall(r"\w+", low))


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


_JSON_NUMBER = re.compile(r'("[^"\n]*":[ \t]*)-?\d+(?:\.\d+)?(?=[ \t]*[,}\]\n])')


def leaked_outside_kept(convs: list[dict[str, Any]], kept: list[str], shared: str) -> list[str]:
    """Planted values found in the shared outputs (reports, console, shards, kept Parquet) while absent
    from every kept record: a leak by another path than the records themselves (must be empty).
    JSON numbers (a manifest's `"bytes": 28998`) are no planted value, which are all strings: set 20's
    postcode 28998 was a shard's size."""
    shared = _JSON_NUMBER.sub(r"\1#", shared)
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
    ap.add_argument("--split", choices=sorted(TEMPLATES), default="held-out")
    ap.add_argument("--n", type=int, default=480, help="conversations")
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
