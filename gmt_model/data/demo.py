"""The offline ``demo`` dataset: realistic multi-turn conversations with planted preferences.

Everything here is deterministic for a :class:`DemoSpec` (seed included):
the same spec gives byte-identical files.

How the data is made
--------------------
* Six topics (coding, math, creative writing, travel, science explanation,
  business email), each with query templates and slot values, so first-turn
  questions are varied and realistic; follow-up turns ("Now make it
  shorter.", "Can you add an example?") depend on the topic.  Query texts come
  from a bounded template space, so the number of distinct texts to embed
  stays manageable at every size (see :func:`unique_query_count`).
* Five LLMs (:data:`LLMS`) with one-sentence descriptions
  (:data:`LLM_DESCRIPTIONS`, embedded as ``model_emb``) and per-LLM response
  styles (terse, bulleted, numbered, ...).
* Users belong to taste groups (4 by default, balanced).  Each taste group
  has a preference matrix ``pref[taste, topic, llm]``: on every topic each
  group strongly favours a different LLM and dislikes another.  The matrix
  is centred over taste groups, so averaged over groups every topic's
  preferences cancel exactly and a user-blind router can only exploit the
  small global quality differences ``quality[llm]``.
* The utility of one answer (one record, one turn) is
  ``quality[llm] + pref[taste, topic, llm] + followup_bonus[llm] * (turn > 1)
  + conversation noise + turn noise``; the rating is
  ``3 + rating_scale * utility + user bias`` rounded to half points and
  clipped to [1, 5] (ties happen in roughly 10-15% of pairs).
* A comparison group is K = 2 (sometimes 3) different LLMs answering the same
  1-3 turn conversation for one user.  The record's ``turn`` is the number
  of turns; ``conversation`` lists every turn, each with its own rating.
  A fraction of users have little history (2-5 groups).

Files written by :func:`write_demo_dataset` (names from ``schema.SPLIT_FILES``):
``training_set.jsonl``, ``valid_set.jsonl``, ``test_set.jsonl`` (GMTRouter
JSONL, split per user with :func:`gmt_model.data.splits.split_groups`),
``raw_conversations.jsonl`` (records without embeddings, plus ``topic`` and
``split``) and ``truth.json`` (the planted structure, the spec and counts).

Command line: ``python -m gmt_model.data.demo --size tiny --out DIR``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import string
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from gmt_model.atomic import write_lines_atomic
from gmt_model.data.jsonl import write_jsonl
from gmt_model.method.schema import (
    F_CONVERSATION,
    F_ENCODER,
    F_JUDGE,
    F_MODEL,
    F_MODEL_EMB,
    F_QUERY,
    F_QUERY_EMB,
    F_QUESTION_ID,
    F_RATING,
    F_RESPONSE,
    F_TURN,
    SPLIT_FILES,
    SPLITS,
)
from gmt_model.data.splits import split_groups, split_summary, thin_users

__all__ = [
    "TOPICS",
    "TOPIC_FAMILY",
    "LLMS",
    "LLM_DESCRIPTIONS",
    "DEFAULT_QUALITY",
    "DEFAULT_FOLLOWUP_BONUS",
    "PRESETS",
    "RAW_FILE",
    "TRUTH_FILE",
    "F_TOPIC",
    "F_SPLIT",
    "DemoSpec",
    "DemoTruth",
    "TextEncoder",
    "generate_conversations",
    "iter_conversations",
    "unique_query_count",
    "embed_records",
    "write_demo_dataset",
    "HashedEncoder",
    "demo_graph",
    "demo_columns",
    "distinct_query_rows",
    "main",
]

RAW_FILE = "raw_conversations.jsonl"
TRUTH_FILE = "truth.json"
#: extra fields of the raw records (not part of the GMTRouter format)
F_TOPIC = "topic"
F_SPLIT = "split"

# --------------------------------------------------------------------------
# LLMs
# --------------------------------------------------------------------------
LLMS: tuple[str, ...] = (
    "gpt-4o",
    "claude-3-5-sonnet",
    "llama-3-70b-instruct",
    "mistral-large",
    "qwen2-72b-instruct",
)

LLM_DESCRIPTIONS: dict[str, str] = {
    "gpt-4o": "GPT-4o is OpenAI's fast multimodal flagship model, a strong general-purpose assistant "
    "for reasoning, coding and conversation.",
    "claude-3-5-sonnet": "Claude 3.5 Sonnet is Anthropic's mid-sized model, known for careful reasoning, "
    "nuanced writing and reliable coding help.",
    "llama-3-70b-instruct": "Llama 3 70B Instruct is Meta's open-weights 70-billion-parameter chat model, "
    "tuned to follow instructions with detailed, friendly answers.",
    "mistral-large": "Mistral Large is Mistral AI's flagship model, a multilingual assistant that gives "
    "concise, direct answers with strong reasoning.",
    "qwen2-72b-instruct": "Qwen2 72B Instruct is Alibaba Cloud's open-weights multilingual model, strong at "
    "mathematics and code, answering in structured steps.",
}

#: small global quality differences (utility units), in the order of LLMS
DEFAULT_QUALITY: tuple[float, ...] = (0.25, 0.20, -0.10, -0.20, -0.15)
#: extra utility on follow-up turns (some models revise better), in the order of LLMS
DEFAULT_FOLLOWUP_BONUS: tuple[float, ...] = (0.0, 0.15, -0.15, 0.05, -0.05)

# --------------------------------------------------------------------------
# Topics: query templates, slot values, follow-ups and response bodies
# --------------------------------------------------------------------------
# A template is (query format, focus format).  The focus is a short phrase
# the responses refer to.  A slot value is either a string used in both, or a
# pair (text in the query, text in the focus).
SlotValue = str | tuple[str, str]


@dataclass(frozen=True)
class _Topic:
    name: str
    templates: tuple[tuple[str, str], ...]
    slots: dict[str, tuple[SlotValue, ...]]
    bodies: tuple[tuple[str, ...], ...]  # response bodies (sentences using {focus})
    followups: tuple[tuple[str, tuple[str, ...]], ...]  # (follow-up query, response sentences)


_LANGS = ("Python", "JavaScript", "TypeScript", "Go", "Rust", "Java", "C#", "Kotlin")

_CODING = _Topic(
    name="coding",
    templates=(
        ("How do I {task} in {lang}?", "{task} in {lang}"),
        ("Write a {lang} function that {fn}.", "write a {lang} function that {fn}"),
        ("Why does my {lang} code throw {error} when I {action}?", "fix {error} when you {action} in {lang}"),
        ("What is the idiomatic way to {task} in {lang}?", "{task} idiomatically in {lang}"),
        ("I {action} with {tool} in {lang}. Is there a cleaner way?", "{action} cleanly in {lang} without {tool}"),
        ("Can you explain how to {task} in {lang} for a beginner?", "{task} in {lang}"),
    ),
    slots={
        "lang": _LANGS,
        "task": (
            "read a large CSV file line by line", "parse JSON from an HTTP response",
            "sort a list of records by two keys", "remove duplicates from a list while keeping order",
            "run several tasks concurrently", "write unit tests for a small class",
            "handle timeouts in network calls", "reverse a linked list", "memoize an expensive function",
            "format dates in ISO 8601", "read environment variables safely",
            "split a string on several delimiters", "merge two sorted arrays",
            "retry a failing request with exponential backoff", "stream a large file upload",
        ),
        "fn": (
            "checks whether a string is a palindrome", "returns the n-th Fibonacci number",
            "flattens a nested list", "counts word frequencies in a text", "validates an email address",
            "computes the median of a list", "converts Roman numerals to integers",
            "finds the longest common prefix of a list of strings", "splits a list into batches of size n",
            "deep-merges two dictionaries", "computes a moving average", "checks if two strings are anagrams",
        ),
        "error": (
            "a null pointer exception", "an index out of range error", "a type error", "a deadlock",
            "a stack overflow", "an encoding error", "a 'module not found' error", "a race condition",
        ),
        "action": (
            "iterate over a map while deleting keys", "read a file in a loop", "call an async function",
            "parse user input", "deserialize nested JSON", "update a shared counter from two threads",
            "recurse over a deep tree", "import a module from a sibling folder",
        ),
        "tool": ("a global variable", "nested loops", "a long chain of if statements", "string concatenation",
                 "a regular expression"),
    },
    bodies=(
        ("To {focus}, start from the standard library rather than a new dependency.",
         "Keep the core logic in one small function that takes its inputs as arguments.",
         "Handle errors explicitly and add a test for the empty and the very large case."),
        ("The usual way to {focus} is to separate reading the input from processing it.",
         "That keeps each piece easy to test and lets you stream data instead of loading it all.",
         "Name things after what they mean, not after their types."),
        ("For this, the key point is to avoid shared mutable state.",
         "Write the function so that it returns a new value instead of changing its argument.",
         "A short example with a unit test makes the behaviour clear."),
        ("Here is a compact approach that works in most codebases.",
         "Validate the input first, then do the work in a single pass, and return early on errors.",
         "Measure before optimising; the simple version is usually fast enough."),
    ),
    followups=(
        ("Can you add type hints and comments?",
         ("Here is the same solution with type annotations and a comment on each step.",
          "The comments explain why, not what, so they stay useful when the code changes.")),
        ("Now make it shorter.",
         ("Here is a shorter version that keeps the same behaviour.",
          "I merged the helper into the main function and removed the intermediate variables.")),
        ("How would I write a unit test for this?",
         ("Test the normal case, the empty input and one invalid input.",
          "Keep each test focused on one behaviour and give it a descriptive name.")),
        ("What is the time complexity?",
         ("The solution runs in linear time in the size of the input.",
          "Memory use is linear too, because it keeps one pass of intermediate results.")),
        ("Can you make it handle empty input and other edge cases?",
         ("Now the function returns early for empty input and raises a clear error for invalid values.",
          "I added checks for None and for very large inputs.")),
        ("Can you rewrite it without any third-party libraries?",
         ("This version only uses the standard library.",
          "It is a few lines longer but has no dependencies to install or update.")),
        ("Can you show an example of calling it?",
         ("Here is a small example that calls the function and prints the result.",
          "The expected output is shown in a comment below the call.")),
        ("Explain it line by line.",
         ("The first lines validate the input; the loop does the actual work.",
          "The last line returns the result, so the caller decides what to do with it.")),
    ),
)

_MATH = _Topic(
    name="math",
    templates=(
        ("Solve for x: {a}x + {b} = {c}.", "solve {a}x + {b} = {c}"),
        ("What is the derivative of {func}?", "differentiate {func}"),
        ("Explain how to {concept} with a simple example.", "{concept}"),
        ("What is the probability of {event}?", "find the probability of {event}"),
        ("Can you prove that {statement}?", "prove that {statement}"),
        ("How do I calculate {quantity}?", "calculate {quantity}"),
    ),
    slots={
        "a": ("2", "3", "4", "5", "6", "7", "8", "9"),
        "b": ("3", "5", "7", "12", "15"),
        "c": ("19", "27", "40", "52", "64"),
        "func": ("x^3 - 4x", "sin(x) * cos(x)", "e^(2x)", "ln(x^2 + 1)", "sqrt(x) + 1/x", "x * e^x",
                 "tan(x)", "(x^2 + 1)^5", "x / (1 + x)", "3x^4 - 2x^2 + 7", "log2(x)", "cos(3x)"),
        "concept": ("solve a quadratic equation", "multiply two matrices", "find the area under a curve",
                    "compute a standard deviation", "use the chain rule", "factor a polynomial",
                    "convert a fraction to a percentage", "solve a system of two linear equations",
                    "find the greatest common divisor", "use logarithm rules", "compute compound interest",
                    "find the inverse of a function"),
        "event": ("rolling two sixes with two dice", "drawing two aces from a deck", "getting at least one head in three coin flips",
                  "two people in a room of 23 sharing a birthday", "drawing a red ball twice with replacement from 3 red and 5 blue",
                  "rolling a sum of 7 with two dice", "getting exactly two heads in four flips", "winning three games in a row at 60% each",
                  "a random card being a heart or a king", "picking a defective item from a batch with 2% defects"),
        "statement": ("the square root of 2 is irrational", "there are infinitely many primes",
                      "the sum of the first n odd numbers is n^2", "the angles of a triangle add up to 180 degrees",
                      "every integer greater than 1 has a prime factor", "n^3 - n is divisible by 6",
                      "the harmonic series diverges", "a number is divisible by 3 if its digit sum is",
                      "the product of two odd numbers is odd", "2^n > n for every natural number n"),
        "quantity": ("the volume of a cone", "the slope between two points", "a 15% tip on a bill",
                     "the mean and median of a data set", "the distance between two points in 3D",
                     "the area of a circle from its circumference", "the monthly payment on a loan",
                     "the percentage change between two prices", "the determinant of a 3x3 matrix",
                     "the expected value of a dice game"),
    },
    bodies=(
        ("To {focus}, first write down what is given and what is asked.",
         "Then apply the rule one step at a time, keeping every intermediate result.",
         "Finally check the result by substituting it back or estimating it."),
        ("Let's {focus} carefully.",
         "Isolate the unknown on one side, simplify both sides, and watch the signs.",
         "A quick sanity check with a rounded value catches most mistakes."),
        ("The standard method is to reduce the problem to a formula you already know.",
         "Identify the pattern, substitute the values, and simplify.",
         "Write each step on its own line so mistakes are easy to spot."),
        ("Here is the reasoning in short.",
         "Break the problem into smaller cases, solve each, and combine the results.",
         "The final answer follows directly once the cases are clear."),
    ),
    followups=(
        ("Can you show the steps in more detail?",
         ("Sure, here is every step with the rule used at each one.",
          "I also wrote out the arithmetic that I skipped before.")),
        ("Can you give me another example?",
         ("Here is a similar problem with different numbers.",
          "The method is the same, only the values change.")),
        ("Is there a faster way to do this?",
         ("Yes, there is a shortcut that skips the intermediate steps.",
          "It works whenever the problem has this particular structure.")),
        ("Can you double-check the answer?",
         ("I substituted the result back and both sides agree.",
          "An estimate with rounded numbers gives a value close to it as well.")),
        ("Explain it like I'm 12.",
         ("Think of it like sharing sweets fairly between friends.",
          "Each step just makes the problem a little simpler until the answer is obvious.")),
        ("What is a common mistake here?",
         ("The most common mistake is dropping a sign when moving terms across.",
          "Another is forgetting to apply the rule to every term.")),
    ),
)

_CREATIVE = _Topic(
    name="creative_writing",
    templates=(
        ("Write a short poem about {subject} in the style of {style}.", "a short poem about {subject} in the style of {style}"),
        ("Write a {length} story about {character} who {plot}.", "a {length} story about {character} who {plot}"),
        ("Give me five title ideas for a {genre} novel about {subject}.", "a list of title ideas for a {genre} novel about {subject}"),
        ("Write a haiku about {subject}.", "a haiku about {subject}"),
        ("Write the opening paragraph of a {genre} story set in {setting}.", "an opening for a {genre} story set in {setting}"),
        ("Write a limerick about {character} who {plot}.", "a limerick about {character} who {plot}"),
    ),
    slots={
        "subject": ("the ocean at night", "a forgotten library", "autumn leaves", "city rain", "an old lighthouse",
                    "the first snow", "a lost letter", "a quiet train station", "a garden in spring",
                    "the last day of summer", "a stray cat", "a mountain sunrise"),
        "style": ("Emily Dickinson", "Pablo Neruda", "a sea shanty", "a nursery rhyme", "free verse",
                  "Robert Frost", "a Shakespearean sonnet", "Mary Oliver"),
        "length": ("very short", "two-paragraph", "bedtime", "100-word", "funny", "suspenseful"),
        "character": ("a retired astronaut", "a shy dragon", "a detective with amnesia", "a talking teapot",
                      "a young baker", "a robot gardener", "a ghost who is afraid of the dark",
                      "a librarian on her last day"),
        "plot": ("finds a map in a used book", "has to win back a lost friend", "discovers a door that wasn't there yesterday",
                 "wakes up speaking every language", "must deliver a letter before midnight",
                 "gets stuck in a time loop", "opens a bakery on the moon", "learns to fly too late"),
        "genre": ("mystery", "science fiction", "fantasy", "romance", "thriller", "historical", "horror"),
        "setting": ("a floating city", "1920s Paris", "a research station in Antarctica", "a small fishing village",
                    "a generation ship", "a haunted boarding school", "a desert caravan", "a rainy Tokyo night"),
    },
    bodies=(
        ("Here is {focus}.",
         "The opening image sets the mood, and the middle turns it in an unexpected direction.",
         "It ends on a quiet line that echoes the beginning."),
        ("I went for {focus}, keeping the language simple and concrete.",
         "Short lines carry the rhythm, and one strong image holds it together.",
         "The final line leaves a little room for the reader."),
        ("Here's my take on {focus}.",
         "I leaned into sound and texture rather than explanation.",
         "The tone starts playful and becomes more tender toward the end."),
        ("Below is {focus}.",
         "Each part builds on a single small detail until it becomes the centre of the piece.",
         "I kept it tight so every word earns its place."),
    ),
    followups=(
        ("Now make it shorter.",
         ("Here is a tighter version with the weakest lines cut.",
          "The core image and the ending are unchanged.")),
        ("Make it funnier.",
         ("I added a running joke and a surprise in the last line.",
          "The tone is lighter, but the structure is the same.")),
        ("Can you make the tone darker?",
         ("This version keeps the images but shifts them toward loss and unease.",
          "The ending no longer resolves neatly.")),
        ("Rewrite it for young children.",
         ("I used simple words, a gentle rhythm and a happy ending.",
          "It is meant to be read aloud.")),
        ("Give it a title.",
         ("A few title options: one literal, one poetic and one playful.",
          "My favourite is the second, because it hints at the ending.")),
        ("Make it rhyme.",
         ("Here is a rhyming version with an AABB pattern.",
          "I changed a few words to keep the meter steady.")),
        ("Add more vivid imagery.",
         ("I added colour, sound and texture to each scene.",
          "The images stay concrete so the piece does not drift into abstraction.")),
    ),
)

_TRAVEL = _Topic(
    name="travel",
    templates=(
        ("Plan a {days}-day itinerary for {city} on a {budget} budget.", "a {days}-day trip to {city} on a {budget} budget"),
        ("What should I pack for a trip to {city} in {month}?", "packing for {city} in {month}"),
        ("Which neighbourhoods in {city} are best to stay in for {traveler}?", "where to stay in {city} for {traveler}"),
        ("How do I get from the airport to the city centre in {city}?", "getting from the airport into {city}"),
        ("Is {month} a good time to visit {city}?", "visiting {city} in {month}"),
        ("What local food should I try in {city}?", "local food in {city}"),
    ),
    slots={
        "days": ("2", "3", "4", "5", "7"),
        "city": ("Lisbon", "Kyoto", "Mexico City", "Istanbul", "Vancouver", "Marrakech", "Prague", "Seoul",
                 "Buenos Aires", "Cape Town", "Reykjavik", "Hanoi", "Rome", "New York", "Edinburgh", "Bangkok"),
        "budget": ("tight", "moderate", "generous"),
        "month": ("January", "March", "May", "July", "September", "November", "December"),
        "traveler": ("a family with young kids", "a solo backpacker", "a couple on a honeymoon",
                     "a business traveller", "someone who loves nightlife", "an older couple who likes quiet evenings"),
    },
    bodies=(
        ("For {focus}, group the sights by area so you do not cross the city twice a day.",
         "Mornings are best for the popular places, before the crowds arrive.",
         "Leave one afternoon unplanned for wandering and a long lunch."),
        ("Here are my suggestions for {focus}.",
         "Public transport is usually the cheapest and often the fastest option.",
         "Book the one or two things that sell out in advance and keep the rest flexible."),
        ("A few practical tips for {focus}.",
         "Check the local weather and holidays for your dates; both change what is open.",
         "Carry a little cash, since small places may not take cards."),
        ("The short version for {focus}: keep it simple.",
         "Stay central, walk as much as you can and eat where the locals queue.",
         "A day pass for transport pays off if you make more than three trips."),
    ),
    followups=(
        ("What about a cheaper option?",
         ("To save money, stay a little outside the centre near a metro line.",
          "Free walking tours and lunch menus are good value.")),
        ("Can you add some restaurant suggestions?",
         ("I added a mix of casual places and one special dinner.",
          "Reservations are a good idea for the dinner; the others take walk-ins.")),
        ("What if I'm travelling with kids?",
         ("With kids, plan fewer sights per day and add parks and a museum with hands-on exhibits.",
          "Pick accommodation with a kitchen and keep evenings short.")),
        ("Can you put it in a table by day?",
         ("Here it is as a table with morning, afternoon and evening for each day.",
          "Travel times between places are in the last column.")),
        ("What are some good day trips nearby?",
         ("There are several easy day trips by train or bus.",
          "Pick one that contrasts with the city, like the coast or the mountains.")),
        ("Is it safe to walk around at night?",
         ("The central areas are generally busy and safe in the evening.",
          "Use common sense: stick to lit streets and keep valuables out of sight.")),
    ),
)

_SCIENCE = _Topic(
    name="science",
    templates=(
        ("Explain {phenomenon} to a {audience}.", "{phenomenon}"),
        ("{question}", "{question}"),
        ("What is the difference between {pair}?", "the difference between {pair}"),
        ("How does {tech} work?", "how {tech} works"),
        ("Can you explain {phenomenon} in simple terms?", "{phenomenon}"),
    ),
    slots={
        "phenomenon": ("photosynthesis", "black holes", "natural selection", "quantum entanglement",
                       "the greenhouse effect", "how vaccines train the immune system", "plate tectonics",
                       "entropy", "the theory of relativity", "how neurons communicate", "ocean tides",
                       "the Doppler effect", "nuclear fusion in stars", "DNA replication"),
        "audience": ("ten-year-old", "high school student", "curious adult", "first-year university student",
                     "non-scientist"),
        "question": (("Why is the sky blue?", "why the sky is blue"),
                     ("Why do we have seasons?", "why we have seasons"),
                     ("Why does ice float on water?", "why ice floats"),
                     ("Why do cats purr?", "why cats purr"),
                     ("Why does bread rise?", "why bread rises"),
                     ("Why do stars twinkle?", "why stars twinkle"),
                     ("Why is the ocean salty?", "why the ocean is salty"),
                     ("Why do we dream?", "why we dream"),
                     ("Why does metal feel colder than wood?", "why metal feels colder than wood"),
                     ("Why do leaves change colour in autumn?", "why leaves change colour")),
        "pair": ("weather and climate", "a virus and a bacterium", "mass and weight", "mitosis and meiosis",
                 "speed and velocity", "an element and a compound", "nuclear fission and fusion",
                 "correlation and causation", "heat and temperature", "AC and DC current"),
        "tech": ("GPS", "a microwave oven", "an MRI scanner", "a lithium-ion battery", "noise-cancelling headphones",
                 "a solar panel", "CRISPR gene editing", "a refrigerator", "Wi-Fi", "a touchscreen"),
    },
    bodies=(
        ("The key idea behind {focus} is simpler than it sounds.",
         "It comes down to energy moving from one form or place to another.",
         "Once you see that, the details follow naturally."),
        ("Here is an intuitive explanation of {focus}.",
         "Start with an everyday observation, then zoom in on what happens at a smaller scale.",
         "The numbers matter less than the direction of the effect."),
        ("Scientists explain {focus} with a well-tested model.",
         "The model makes predictions that experiments have confirmed many times.",
         "There are still open questions at the edges, which is where current research happens."),
        ("Think of {focus} as a balance between two competing effects.",
         "When one of them wins, you see the behaviour we observe.",
         "A simple home experiment can show the basic idea."),
    ),
    followups=(
        ("Can you add an example?",
         ("Here is an everyday example that shows the same effect.",
          "You can notice it the next time you cook or go outside.")),
        ("Now explain it to an expert.",
         ("At a technical level, the effect follows from conservation laws and the relevant equations.",
          "The simplified picture leaves out second-order corrections.")),
        ("Can you make it shorter?",
         ("In one sentence: it is the result of energy and matter following simple rules at scale.",
          "Everything else is detail.")),
        ("What is a common misconception about this?",
         ("A common misconception is that the effect has a single cause.",
          "In reality several factors contribute, and one usually dominates.")),
        ("How do scientists measure this?",
         ("They measure it with careful instruments and repeat the measurement many times.",
          "Comparing results from different methods reduces errors.")),
        ("Give me an analogy.",
         ("Imagine a crowded room where people slowly spread out toward the empty corners.",
          "The analogy is not perfect, but it captures the main idea.")),
    ),
)

_BUSINESS = _Topic(
    name="business_email",
    templates=(
        ("Write an email to {recipient} {purpose}.", "an email to {recipient} {purpose}"),
        ("Draft a polite follow-up to {recipient} about {subject}.", "a follow-up to {recipient} about {subject}"),
        ("Help me write a message to {recipient} declining {offer}.", "a message to {recipient} declining {offer}"),
        ("Write a short LinkedIn message to {recipient} asking about {subject}.", "a LinkedIn message to {recipient} about {subject}"),
        ("How should I tell {recipient} that {news}?", "telling {recipient} that {news}"),
    ),
    slots={
        "recipient": ("my manager", "a new client", "the finance team", "a job recruiter", "a supplier",
                      "my team", "a former colleague", "the hiring committee", "a customer", "our CEO"),
        "purpose": ("asking for a deadline extension", "requesting a raise", "introducing our new product",
                    "scheduling a project kickoff", "apologising for a delayed shipment",
                    "confirming the meeting agenda", "asking for feedback on a proposal",
                    "announcing a process change"),
        "subject": ("an unpaid invoice", "my job application", "the contract renewal", "last week's proposal",
                    "the open position", "the budget approval", "a partnership idea", "the quarterly report"),
        "offer": ("a job offer", "a meeting invitation", "a vendor proposal", "a speaking invitation",
                  "a request for a discount", "an extra project"),
        "news": ("the launch is delayed by two weeks", "the budget was cut", "I am leaving the company",
                 "we made a mistake in their order", "the project is over budget", "we are changing suppliers"),
    },
    bodies=(
        ("Here is a draft for {focus}.",
         "It opens with the main point, gives one sentence of context and ends with a clear next step.",
         "The tone is polite but direct."),
        ("For {focus}, keep it short and specific.",
         "Mention the date or the document you refer to, and say exactly what you need.",
         "Close with a thank-you and your availability."),
        ("A good structure for {focus}: greeting, purpose, details, request, sign-off.",
         "I kept each part to one or two sentences so it reads quickly on a phone.",
         "Adjust the greeting to how well you know the person."),
        ("Below is a professional version of {focus}.",
         "It acknowledges the other side's perspective before making the request.",
         "The subject line states the purpose so it is easy to find later."),
    ),
    followups=(
        ("Make it more formal.",
         ("Here is a more formal version with a traditional greeting and closing.",
          "I removed contractions and casual phrases.")),
        ("Now make it shorter.",
         ("Here is a three-sentence version that keeps the request and the deadline.",
          "Everything else was cut.")),
        ("Make it sound friendlier.",
         ("This version is warmer: it opens with a personal line and thanks them up front.",
          "The request itself is unchanged.")),
        ("Can you add a subject line?",
         ("Here are three subject line options, from most to least direct.",
          "I would use the first one for a busy reader.")),
        ("Adjust it for a senior executive.",
         ("For an executive, lead with the decision you need and the impact.",
          "Details move to a short second paragraph.")),
        ("Add a clear call to action.",
         ("The email now ends with a specific request and a date.",
          "A concrete ask makes a reply much more likely.")),
    ),
)

_TOPIC_DEFS: tuple[_Topic, ...] = (_CODING, _MATH, _CREATIVE, _TRAVEL, _SCIENCE, _BUSINESS)
TOPICS: tuple[str, ...] = tuple(t.name for t in _TOPIC_DEFS)
#: topic families: taste groups pick their favourite LLM per family
TOPIC_FAMILY: dict[str, int] = {"coding": 0, "math": 0, "science": 0,
                                "creative_writing": 1, "travel": 1, "business_email": 1}
_MAX_TURNS = 3
_MAX_K = 3

# --------------------------------------------------------------------------
# Per-LLM response styles
# --------------------------------------------------------------------------
_OPENERS: dict[str, tuple[str, ...]] = {
    "gpt-4o": ("Sure!", "Absolutely!", "Great question!"),
    "claude-3-5-sonnet": ("Good question. Let me walk through it.", "Here's a careful take on this.",
                          "I'd approach this in a few steps."),
    "llama-3-70b-instruct": ("Of course! Here's what you need to know:", "Here is a detailed answer:",
                             "Great, let's break it down:"),
    "mistral-large": ("In short:", "Answer:", "Briefly:"),
    "qwen2-72b-instruct": ("Certainly. Here is a structured answer.", "Sure, here are the key points.",
                           "Let me explain step by step."),
}
_CLOSERS: dict[str, tuple[str, ...]] = {
    "gpt-4o": ("Let me know if you'd like me to go deeper.", "Happy to adjust it if you need something different.",
               "Would you like an example as well?"),
    "claude-3-5-sonnet": ("One caveat: the best choice depends on your situation, so adapt as needed.",
                          "If any part is unclear, I'm glad to expand on it.",
                          "I've kept it focused; tell me if you want more detail."),
    "llama-3-70b-instruct": ("I hope this helps!", "Feel free to ask if you have any other questions!",
                             "Good luck, and have fun with it!"),
    "mistral-large": ("", "That's the gist.", ""),
    "qwen2-72b-instruct": ("Summary: follow the points above in order.", "These points should cover most cases.",
                           "I hope this is useful for your work."),
}
_ACKS: dict[str, tuple[str, ...]] = {
    "gpt-4o": ("Of course!", "Sure thing!", "Here you go!"),
    "claude-3-5-sonnet": ("Happy to refine it.", "Good idea.", "Certainly, here's the revision."),
    "llama-3-70b-instruct": ("Absolutely! Here's the updated version:", "No problem at all!", "Great request!"),
    "mistral-large": ("Done.", "Here:", "Updated:"),
    "qwen2-72b-instruct": ("Certainly. Revised answer below.", "Sure, here is the update.", "Understood. Updated points:"),
}


def _style(llm: str, sentences: Sequence[str]) -> str:
    """Lay out response sentences in the LLM's house style."""
    if llm == "mistral-large":
        return " ".join(sentences[:2])
    if llm == "llama-3-70b-instruct":
        return "\n".join(f"- {s}" for s in sentences)
    if llm == "qwen2-72b-instruct":
        return "\n".join(f"{i}. {s}" for i, s in enumerate(sentences, start=1))
    return " ".join(sentences)


def _join(*parts: str) -> str:
    return "\n\n".join(p for p in parts if p)


# --------------------------------------------------------------------------
# Templates: parsing and query construction
# --------------------------------------------------------------------------
_FORMATTER = string.Formatter()


@lru_cache(maxsize=None)
def _template_slots(topic_idx: int, template_idx: int) -> tuple[str, ...]:
    """Slot names of a template, in first-appearance order over query and focus."""
    query_fmt, focus_fmt = _TOPIC_DEFS[topic_idx].templates[template_idx]
    names: list[str] = []
    for fmt in (query_fmt, focus_fmt):
        for _, name, _, _ in _FORMATTER.parse(fmt):
            if name and name not in names:
                names.append(name)
    return tuple(names)


_MAX_SLOTS = max(len(_template_slots(ti, j)) for ti, t in enumerate(_TOPIC_DEFS) for j in range(len(t.templates)))


def _check_templates() -> None:
    for ti, topic in enumerate(_TOPIC_DEFS):
        for j in range(len(topic.templates)):
            for name in _template_slots(ti, j):
                if name not in topic.slots:
                    raise RuntimeError(f"demo topic {topic.name!r} template {j} uses unknown slot {name!r}")
        if len(topic.followups) < _MAX_TURNS - 1:
            raise RuntimeError(f"demo topic {topic.name!r} needs at least {_MAX_TURNS - 1} follow-ups")


_check_templates()


@lru_cache(maxsize=200_000)
def _query(topic_idx: int, template_idx: int, slot_idx: tuple[int, ...]) -> tuple[str, str]:
    """(query text, focus phrase) for one template filling."""
    topic = _TOPIC_DEFS[topic_idx]
    query_fmt, focus_fmt = topic.templates[template_idx]
    q_vals: dict[str, str] = {}
    f_vals: dict[str, str] = {}
    for name, k in zip(_template_slots(topic_idx, template_idx), slot_idx):
        value = topic.slots[name][k]
        if isinstance(value, tuple):
            q_vals[name], f_vals[name] = value
        else:
            q_vals[name] = f_vals[name] = value
    return query_fmt.format(**q_vals), focus_fmt.format(**f_vals)


def _template_space(topic_idx: int) -> int:
    topic = _TOPIC_DEFS[topic_idx]
    total = 0
    for j in range(len(topic.templates)):
        total += math.prod(len(topic.slots[s]) for s in _template_slots(topic_idx, j))
    return total


# --------------------------------------------------------------------------
# Spec and truth
# --------------------------------------------------------------------------
#: preset name -> (n_users, mean groups per user); about 3.85 interactions per group
PRESETS: dict[str, tuple[int, float]] = {
    "tiny": (80, 16.0),  # ~5k interactions (tests)
    "small": (100, 26.0),  # ~10k
    "medium": (800, 32.5),  # ~100k
    "large": (5000, 52.0),  # ~1M
}

_LIGHT_MIN, _LIGHT_MAX = 2, 5  # groups of a user with little history
_HEAVY_MIN = _LIGHT_MAX + 1


@dataclass(frozen=True)
class DemoSpec:
    """Parameters of the demo generator (all utilities are in rating-free units).

    ``n_groups_per_user`` is the mean number of comparison groups per user;
    ``light_user_fraction`` of the users get only 2-5 groups.
    """

    n_users: int
    n_groups_per_user: float
    n_taste_groups: int = 4
    seed: int = 0
    light_user_fraction: float = 0.15
    k3_fraction: float = 0.2
    turn_probs: tuple[float, float, float] = (0.45, 0.35, 0.20)
    pref_strength: float = 3.0
    dislike_strength: float = 1.0
    pref_noise: float = 0.15
    quality: tuple[float, ...] = DEFAULT_QUALITY
    followup_bonus: tuple[float, ...] = DEFAULT_FOLLOWUP_BONUS
    conversation_noise: float = 0.4
    turn_noise: float = 0.4
    rating_scale: float = 1.0
    user_bias_sd: float = 0.25
    topic_concentration: float = 0.8
    split_fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)
    name: str = "demo"

    def __post_init__(self) -> None:
        def bad(field_name: str, expected: str) -> ValueError:
            return ValueError(f"DemoSpec.{field_name}: expected {expected}, got {getattr(self, field_name)!r}")

        if not isinstance(self.n_users, int) or self.n_users < 1:
            raise bad("n_users", "an integer >= 1")
        if not (self.n_groups_per_user >= _LIGHT_MIN):
            raise bad("n_groups_per_user", f"a mean of at least {_LIGHT_MIN} groups per user")
        if not isinstance(self.n_taste_groups, int) or self.n_taste_groups < 2:
            raise bad("n_taste_groups", "an integer >= 2 (with one group the centred preferences vanish)")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise bad("seed", "an integer >= 0")
        if not 0.0 <= self.light_user_fraction <= 1.0:
            raise bad("light_user_fraction", "a number in [0, 1]")
        if not 0.0 <= self.k3_fraction <= 1.0:
            raise bad("k3_fraction", "a number in [0, 1]")
        tp = tuple(float(p) for p in self.turn_probs)
        if len(tp) != _MAX_TURNS or any(p < 0 for p in tp) or abs(sum(tp) - 1.0) > 1e-9:
            raise bad("turn_probs", f"{_MAX_TURNS} non-negative probabilities summing to 1")
        if len(self.quality) != len(LLMS):
            raise bad("quality", f"{len(LLMS)} numbers (one per LLM in {LLMS})")
        if len(self.followup_bonus) != len(LLMS):
            raise bad("followup_bonus", f"{len(LLMS)} numbers (one per LLM in {LLMS})")
        for name in ("pref_strength", "dislike_strength", "pref_noise", "conversation_noise", "turn_noise",
                     "user_bias_sd"):
            if not getattr(self, name) >= 0:
                raise bad(name, "a number >= 0")
        if not self.rating_scale > 0:
            raise bad("rating_scale", "a number > 0")
        if not self.topic_concentration > 0:
            raise bad("topic_concentration", "a number > 0")

    @classmethod
    def preset(cls, size: str, **overrides: Any) -> DemoSpec:
        """A named size: "tiny" (~5k interactions, for tests), "small" (~10k),
        "medium" (~100k) or "large" (~1M).  Keyword overrides replace fields."""
        if size not in PRESETS:
            raise ValueError(f"unknown demo size {size!r}; expected one of {sorted(PRESETS)}")
        n_users, per_user = PRESETS[size]
        kw: dict[str, Any] = {"n_users": n_users, "n_groups_per_user": per_user, "name": f"demo-{size}"}
        kw.update(overrides)
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict of the spec."""
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}


@dataclass
class DemoTruth:
    """The planted structure behind a demo dataset.

    ``pref[taste, topic, llm]`` and ``quality[llm]`` are in utility units;
    ``user_taste`` maps each user id to its taste group.
    """

    user_taste: dict[str, int]
    pref: np.ndarray
    quality: np.ndarray
    topics: tuple[str, ...] = TOPICS
    llms: tuple[str, ...] = LLMS
    followup_bonus: np.ndarray = field(default_factory=lambda: np.asarray(DEFAULT_FOLLOWUP_BONUS))

    def preferred_llm(self, taste: int, topic: str) -> str:
        """The LLM a taste group likes most on a topic (quality included)."""
        t = self.topics.index(topic)
        return self.llms[int(np.argmax(self.pref[taste, t] + self.quality))]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        return {
            "topics": list(self.topics),
            "llms": list(self.llms),
            "quality": [float(x) for x in self.quality],
            "followup_bonus": [float(x) for x in self.followup_bonus],
            "pref": np.asarray(self.pref, dtype=float).tolist(),
            "user_taste": dict(self.user_taste),
        }

    def to_json(self) -> str:
        """Deterministic JSON text (sorted keys)."""
        return json.dumps(self.to_dict(), sort_keys=True, indent=1)

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> DemoTruth:
        """Inverse of :meth:`to_dict`."""
        return cls(
            user_taste={str(k): int(v) for k, v in obj["user_taste"].items()},
            pref=np.asarray(obj["pref"], dtype=float),
            quality=np.asarray(obj["quality"], dtype=float),
            topics=tuple(obj["topics"]),
            llms=tuple(obj["llms"]),
            followup_bonus=np.asarray(obj["followup_bonus"], dtype=float),
        )


# --------------------------------------------------------------------------
# Sampling (vectorised)
# --------------------------------------------------------------------------
@dataclass
class _Plan:
    spec: DemoSpec
    truth: DemoTruth
    user_ids: list[str]
    owner: np.ndarray  # (G,) user index of each group
    topic: np.ndarray  # (G,)
    n_turns: np.ndarray  # (G,)
    k: np.ndarray  # (G,)
    models: np.ndarray  # (G, _MAX_K) llm indices (first k used)
    template_u: np.ndarray  # (G, 1 + _MAX_SLOTS) uniforms for template and slot choice
    followup_u: np.ndarray  # (G, _MAX_TURNS - 1)
    variant: np.ndarray  # (G, _MAX_K, _MAX_TURNS) ints for response variants
    rating: np.ndarray  # (G, _MAX_K, _MAX_TURNS) ratings
    qid_width: int

    @property
    def n_groups(self) -> int:
        return int(self.owner.shape[0])


def _make_pref(spec: DemoSpec, rng: np.random.Generator) -> np.ndarray:
    """Strong, differing per-taste preferences that cancel over taste groups.

    Each taste group has a favourite and a disliked LLM for each topic family
    (technical: coding, math, science; communication: creative writing,
    travel, business email), distinct across groups where possible, plus
    small per-topic variation.  So users prefer different LLMs on different
    topics, and a user's history on one topic of a family tells its taste on
    the others.
    """
    n_t, n_top, n_l = spec.n_taste_groups, len(TOPICS), len(LLMS)
    raw = rng.normal(0.0, spec.pref_noise, size=(n_t, n_top, n_l))
    family = np.array([TOPIC_FAMILY[t] for t in TOPICS])
    for f in np.unique(family):
        order = rng.permutation(n_l)
        for g in range(n_t):
            raw[g, family == f, order[g % n_l]] += spec.pref_strength
            raw[g, family == f, order[(g + 1) % n_l]] -= spec.dislike_strength
    pref = raw - raw.mean(axis=0, keepdims=True)  # cancels over taste groups
    pref = pref - pref.mean(axis=2, keepdims=True)  # zero mean over LLMs (keeps the first property)
    return pref


def _user_group_counts(spec: DemoSpec, rng: np.random.Generator) -> np.ndarray:
    n = spec.n_users
    n_light = int(round(spec.light_user_fraction * n))
    light = np.zeros(n, dtype=bool)
    light[rng.permutation(n)[:n_light]] = True
    light_counts = rng.integers(_LIGHT_MIN, _LIGHT_MAX + 1, size=n)
    mean_light = (_LIGHT_MIN + _LIGHT_MAX) / 2
    heavy_mean = (spec.n_groups_per_user * n - mean_light * n_light) / max(n - n_light, 1)
    extra = max(heavy_mean - _HEAVY_MIN, 0.5)
    r = 4.0  # negative binomial dispersion: a long tail of heavy users
    heavy_counts = _HEAVY_MIN + rng.negative_binomial(r, r / (r + extra), size=n)
    return np.where(light, light_counts, heavy_counts).astype(np.int64)


def _build_plan(spec: DemoSpec) -> _Plan:
    r_truth, r_users, r_groups, r_text = (np.random.default_rng(s) for s in np.random.SeedSequence(spec.seed).spawn(4))
    n_top, n_l = len(TOPICS), len(LLMS)

    pref = _make_pref(spec, r_truth)
    quality = np.asarray(spec.quality, dtype=float)
    followup = np.asarray(spec.followup_bonus, dtype=float)

    width = max(4, len(str(spec.n_users)))
    user_ids = [f"user_{i + 1:0{width}d}" for i in range(spec.n_users)]
    taste = r_users.permutation(np.arange(spec.n_users) % spec.n_taste_groups)
    affinity = r_users.dirichlet(np.full(n_top, spec.topic_concentration), size=spec.n_users)
    bias = r_users.normal(0.0, spec.user_bias_sd, size=spec.n_users)
    counts = _user_group_counts(spec, r_users)

    n_groups = int(counts.sum())
    owner = np.repeat(np.arange(spec.n_users), counts)[r_groups.permutation(n_groups)]
    cdf = np.cumsum(affinity, axis=1)[owner]
    topic = np.minimum((r_groups.random(n_groups)[:, None] > cdf).sum(axis=1), n_top - 1)
    n_turns = r_groups.choice(np.arange(1, _MAX_TURNS + 1), size=n_groups, p=np.asarray(spec.turn_probs, float))
    k = np.where(r_groups.random(n_groups) < spec.k3_fraction, 3, 2)
    models = np.argsort(r_groups.random((n_groups, n_l)), axis=1, kind="stable")[:, :_MAX_K]

    conv_noise = r_groups.normal(0.0, spec.conversation_noise, size=(n_groups, _MAX_K, 1))
    turn_noise = r_groups.normal(0.0, spec.turn_noise, size=(n_groups, _MAX_K, _MAX_TURNS))
    is_followup = (np.arange(_MAX_TURNS) > 0).astype(float)
    utility = (
        (quality[models] + pref[taste[owner][:, None], topic[:, None], models])[:, :, None]
        + followup[models][:, :, None] * is_followup
        + conv_noise
        + turn_noise
    )
    raw_rating = 3.0 + spec.rating_scale * utility + bias[owner][:, None, None]
    rating = np.clip(np.round(raw_rating * 2.0) / 2.0, 1.0, 5.0)

    template_u = r_text.random((n_groups, 1 + _MAX_SLOTS))
    followup_u = r_text.random((n_groups, _MAX_TURNS - 1))
    variant = r_text.integers(0, 2**31 - 1, size=(n_groups, _MAX_K, _MAX_TURNS))

    truth = DemoTruth(
        user_taste={u: int(t) for u, t in zip(user_ids, taste)},
        pref=pref,
        quality=quality,
        followup_bonus=followup,
    )
    return _Plan(
        spec=spec, truth=truth, user_ids=user_ids, owner=owner, topic=topic, n_turns=n_turns, k=k,
        models=models, template_u=template_u, followup_u=followup_u, variant=variant, rating=rating,
        qid_width=max(6, len(str(n_groups))),
    )


def _group_queries(plan: _Plan, g: int) -> tuple[list[str], str]:
    """The query texts of group g (one per turn) and the focus phrase of its first turn."""
    ti = int(plan.topic[g])
    topic = _TOPIC_DEFS[ti]
    u = plan.template_u[g]
    j = min(int(u[0] * len(topic.templates)), len(topic.templates) - 1)
    names = _template_slots(ti, j)
    slot_idx = tuple(min(int(u[1 + s] * len(topic.slots[name])), len(topic.slots[name]) - 1)
                     for s, name in enumerate(names))
    first, focus = _query(ti, j, slot_idx)
    queries = [first]
    n = int(plan.n_turns[g])
    if n >= 2:
        nf = len(topic.followups)
        f1 = min(int(plan.followup_u[g, 0] * nf), nf - 1)
        queries.append(topic.followups[f1][0])
        if n >= 3:
            f2 = min(int(plan.followup_u[g, 1] * (nf - 1)), nf - 2)
            if f2 >= f1:
                f2 += 1
            queries.append(topic.followups[f2][0])
    return queries, focus


@lru_cache(maxsize=None)
def _followup_index(topic_idx: int) -> dict[str, int]:
    return {q: i for i, (q, _) in enumerate(_TOPIC_DEFS[topic_idx].followups)}


def _response(topic_idx: int, llm: str, step: int, query: str, focus: str, variant: int) -> str:
    topic = _TOPIC_DEFS[topic_idx]
    v_body, v_open, v_close = variant % 97, (variant // 97) % 89, (variant // (97 * 89)) % 83
    if step == 0:
        sentences = [s.format(focus=focus) for s in topic.bodies[v_body % len(topic.bodies)]]
        opener = _OPENERS[llm][v_open % len(_OPENERS[llm])]
    else:
        sentences = list(topic.followups[_followup_index(topic_idx)[query]][1])
        opener = _ACKS[llm][v_open % len(_ACKS[llm])]
    closer = _CLOSERS[llm][v_close % len(_CLOSERS[llm])]
    body = _style(llm, sentences)
    if llm in ("gpt-4o", "mistral-large"):
        return " ".join(p for p in (opener, body, closer) if p)
    return _join(opener, body, closer)


def _iter_plan(plan: _Plan, groups: Iterable[int] | None = None, with_topic: bool = True) -> Iterator[list[dict[str, Any]]]:
    """Yield the raw records of each group (in group order)."""
    ids = plan.user_ids
    width = plan.qid_width
    it = range(plan.n_groups) if groups is None else groups
    for g in it:
        g = int(g)
        queries, focus = _group_queries(plan, g)
        ti = int(plan.topic[g])
        n = len(queries)
        judge = ids[int(plan.owner[g])]
        qid = f"demo-{g + 1:0{width}d}"
        records = []
        for j in range(int(plan.k[g])):
            llm = LLMS[int(plan.models[g, j])]
            conv = [
                {
                    F_QUERY: queries[s],
                    F_RESPONSE: _response(ti, llm, s, queries[s], focus, int(plan.variant[g, j, s])),
                    F_RATING: float(plan.rating[g, j, s]),
                }
                for s in range(n)
            ]
            rec: dict[str, Any] = {F_JUDGE: judge, F_MODEL: llm, F_QUESTION_ID: qid, F_TURN: n, F_CONVERSATION: conv}
            if with_topic:
                rec[F_TOPIC] = TOPICS[ti]
            records.append(rec)
        yield records


def _resolve_spec(spec: DemoSpec | str) -> DemoSpec:
    if isinstance(spec, DemoSpec):
        return spec
    if isinstance(spec, str):
        return DemoSpec.preset(spec)
    raise TypeError(f"expected a DemoSpec or a preset name {sorted(PRESETS)}, got {type(spec).__name__}")


def iter_conversations(spec: DemoSpec | str) -> tuple[Iterator[list[dict[str, Any]]], DemoTruth]:
    """Streaming form of :func:`generate_conversations`: an iterator over groups
    (each a list of raw records) and the truth."""
    plan = _build_plan(_resolve_spec(spec))
    return _iter_plan(plan), plan.truth


def generate_conversations(spec: DemoSpec | str) -> tuple[list[dict[str, Any]], DemoTruth]:
    """All raw records (no embeddings) and the planted truth.

    Each record has ``judge``, ``model``, ``question_id``, ``turn`` (number of
    turns), ``conversation`` (``[{query, response, rating}]``) and ``topic``.
    Records of a group are consecutive; question ids are unique per group.
    """
    groups, truth = iter_conversations(spec)
    return [rec for group in groups for rec in group], truth


def _unique_queries(plan: _Plan) -> list[str]:
    seen: dict[str, None] = {}
    for g in range(plan.n_groups):
        for q in _group_queries(plan, g)[0]:
            seen[q] = None
    return list(seen)


def unique_query_count(spec: DemoSpec | str) -> dict[str, int]:
    """How many distinct query texts a spec produces (what the encoder must embed,
    besides one description per LLM), next to the template space size."""
    plan = _build_plan(_resolve_spec(spec))
    space = sum(_template_space(i) for i in range(len(_TOPIC_DEFS))) + len(
        {q for t in _TOPIC_DEFS for q, _ in t.followups}
    )
    return {"unique_queries": len(_unique_queries(plan)), "template_space": space, "groups": plan.n_groups}


# --------------------------------------------------------------------------
# Embedding
# --------------------------------------------------------------------------
class TextEncoder(Protocol):
    """What the demo needs from an encoder (``gmt_model.data.encoder.Encoder`` fits)."""

    name: str

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


def _resolve_encoder(encoder: TextEncoder | str | None) -> TextEncoder:
    if encoder is None or isinstance(encoder, (str, os.PathLike)):
        from gmt_model.data.encoder import get_encoder

        return get_encoder(encoder)
    if not hasattr(encoder, "encode") or not hasattr(encoder, "name"):
        raise TypeError(f"encoder must have .name and .encode(texts), got {type(encoder).__name__}")
    return encoder


def _embed_texts(encoder: TextEncoder, texts: Sequence[str]) -> dict[str, np.ndarray]:
    uniq = list(dict.fromkeys(texts))
    if not uniq:
        return {}
    vecs = np.asarray(encoder.encode(uniq), dtype=np.float32)
    if vecs.ndim != 2 or vecs.shape[0] != len(uniq):
        raise ValueError(
            f"encoder {encoder.name!r} returned an array of shape {vecs.shape} for {len(uniq)} texts; "
            f"expected ({len(uniq)}, dim)"
        )
    return {t: vecs[i] for i, t in enumerate(uniq)}


def _description(llm: str, llm_descriptions: dict[str, str]) -> str:
    try:
        return llm_descriptions[llm]
    except KeyError:
        raise ValueError(f"no description for model {llm!r}; known: {sorted(llm_descriptions)}") from None


def _with_embeddings(
    rec: dict[str, Any], q_emb: dict[str, Any], m_emb: dict[str, Any], encoder_name: str
) -> dict[str, Any]:
    out: dict[str, Any] = {
        F_JUDGE: rec[F_JUDGE],
        F_MODEL: rec[F_MODEL],
        F_QUESTION_ID: rec[F_QUESTION_ID],
        F_TURN: rec[F_TURN],
        F_CONVERSATION: [
            {F_QUERY: t[F_QUERY], F_QUERY_EMB: q_emb[t[F_QUERY]], F_RESPONSE: t.get(F_RESPONSE), F_RATING: t[F_RATING]}
            for t in rec[F_CONVERSATION]
        ],
        F_MODEL_EMB: m_emb[rec[F_MODEL]],
        F_ENCODER: encoder_name,
    }
    for key, value in rec.items():  # keep extra fields (e.g. topic) after the format's own
        if key not in out:
            out[key] = value
    return out


def _as_floats(vec: np.ndarray) -> list[float]:
    # str(np.float32) is the shortest decimal that reads back as the same float32
    return [float(s) for s in map(str, vec.astype(np.float32, copy=False))]


def embed_records(
    records: Sequence[dict[str, Any]],
    encoder: TextEncoder | str | None = None,
    llm_descriptions: dict[str, str] = LLM_DESCRIPTIONS,
) -> list[dict[str, Any]]:
    """Add ``query_emb``, ``model_emb`` and ``encoder`` to raw records (new dicts).

    Every distinct query text and model description is encoded once, in one
    batch; embeddings are lists of floats (plain JSON).  Extra fields such as
    ``topic`` are kept.  ``encoder`` is an :class:`~gmt_model.data.encoder.Encoder`
    (or anything with ``name`` and ``encode``), a name for
    :func:`~gmt_model.data.encoder.get_encoder`, or None for the default.
    """
    enc = _resolve_encoder(encoder)
    queries = [t[F_QUERY] for rec in records for t in rec[F_CONVERSATION]]
    models = list(dict.fromkeys(rec[F_MODEL] for rec in records))
    q_emb = {t: _as_floats(v) for t, v in _embed_texts(enc, queries).items()}
    d_emb = _embed_texts(enc, [_description(m, llm_descriptions) for m in models])
    m_emb = {m: _as_floats(d_emb[_description(m, llm_descriptions)]) for m in models}
    return [_with_embeddings(rec, q_emb, m_emb, enc.name) for rec in records]


# --------------------------------------------------------------------------
# Writing the dataset
# --------------------------------------------------------------------------
def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def _pair_stats(plan: _Plan) -> dict[str, float]:
    """Number of comparison pairs and the tie fraction (over all steps of all groups)."""
    pairs = ties = 0
    for a, b in ((0, 1), (0, 2), (1, 2)):
        valid = (plan.k > b)[:, None] & (np.arange(_MAX_TURNS)[None, :] < plan.n_turns[:, None])
        pairs += int(valid.sum())
        ties += int((valid & (plan.rating[:, a, :] == plan.rating[:, b, :])).sum())
    return {"pairs": pairs, "tie_fraction": round(ties / max(pairs, 1), 4)}


def write_demo_dataset(
    out_dir: str | os.PathLike[str],
    spec_or_size: DemoSpec | str = "tiny",
    encoder: TextEncoder | str | None = None,
    seed: int | None = None,
) -> dict[str, Path]:
    """Generate the demo dataset into ``out_dir``.

    Writes the three GMTRouter JSONL splits (``schema.SPLIT_FILES``), split
    per user with :func:`gmt_model.data.splits.split_groups`; ``raw_conversations.jsonl``
    (raw records with ``topic`` and ``split``, no embeddings); and
    ``truth.json`` (planted structure, spec and counts).  Generation streams
    group by group; every distinct query text is embedded once.  All files
    are first written to temporary names and moved into place at the end,
    so a failure leaves no partial dataset.  ``seed`` (if given) replaces the
    spec's seed.  The same spec and encoder give byte-identical files.

    Returns the paths: keys ``training``, ``valid``, ``test``, ``raw`` and ``truth``.
    """
    spec = _resolve_spec(spec_or_size)
    if seed is not None:
        spec = replace(spec, seed=int(seed))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plan = _build_plan(spec)
    enc = _resolve_encoder(encoder)

    group_users = [plan.user_ids[int(o)] for o in plan.owner]
    splits = split_groups(group_users, spec.split_fractions, seed=spec.seed)

    queries = _unique_queries(plan)
    q_emb = _embed_texts(enc, queries)
    d_emb = _embed_texts(enc, [LLM_DESCRIPTIONS[m] for m in LLMS])
    m_emb = {m: d_emb[LLM_DESCRIPTIONS[m]] for m in LLMS}
    dims = {v.shape[0] for v in q_emb.values()} | {v.shape[0] for v in m_emb.values()}
    if len(dims) != 1:
        raise ValueError(f"encoder {enc.name!r} returned embeddings of several widths: {sorted(dims)}")

    final: dict[str, Path] = {s: out / SPLIT_FILES[s] for s in SPLITS}
    final["raw"] = out / RAW_FILE
    final["truth"] = out / TRUTH_FILE
    token = f".partial-{os.getpid()}"
    temps = {key: p.with_name(p.name + token) for key, p in final.items()}
    try:
        for s in SPLITS:
            idx = np.flatnonzero(splits == s)

            def embedded(idx: np.ndarray = idx) -> Iterator[dict[str, Any]]:
                for group in _iter_plan(plan, idx, with_topic=False):
                    for rec in group:
                        yield _with_embeddings(rec, q_emb, m_emb, enc.name)

            if idx.size:
                write_jsonl(temps[s], embedded())
            else:  # a split can be empty for very small specs
                write_lines_atomic(temps[s], [])

        def raw_lines() -> Iterator[str]:
            for g, group in enumerate(_iter_plan(plan)):
                for rec in group:
                    rec[F_SPLIT] = str(splits[g])
                    yield _dumps(rec)

        n_records = write_lines_atomic(temps["raw"], raw_lines())

        thin = thin_users(group_users, splits, min_training_groups=3)
        n_per_user = np.bincount(plan.owner, minlength=spec.n_users)
        steps = plan.n_turns.astype(np.int64)
        stats = {
            "users": spec.n_users,
            "groups": plan.n_groups,
            "records": n_records,
            "interactions": int((plan.k * steps).sum()),
            **_pair_stats(plan),
            "unique_queries": len(queries),
            "embedding_dim": int(dims.pop()),
            "encoder": enc.name,
            "light_users": int(((n_per_user >= _LIGHT_MIN) & (n_per_user <= _LIGHT_MAX)).sum()),
            "thin_users_lt3_training_groups": len(thin),
            "splits": split_summary(group_users, splits),
        }
        truth = plan.truth.to_dict()
        truth["spec"] = spec.to_dict()
        truth["stats"] = stats
        write_lines_atomic(temps["truth"], [json.dumps(truth, sort_keys=True, indent=1)])
        for key, tmp in temps.items():
            os.replace(tmp, final[key])
    except BaseException:
        for tmp in temps.values():
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        raise
    return final


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------
# --------------------------------------------------------------------------
# Columnar generation (no JSONL): scale tests and benchmarks
# --------------------------------------------------------------------------
#: wording around a new query (a distinct query is its group's template text with its own combination)
_PREFIXES: tuple[str, ...] = ("", "Hi! ", "Hello, ", "Quick question: ", "Hey, ", "Please help: ", "Question: ",
                              "I need some help. ", "Good morning! ", "Hi there, ", "Hey assistant, ",
                              "Sorry to bother you, ")
_SUFFIXES: tuple[str, ...] = ("", " Thanks!", " Thank you.", " Please be brief.", " Please explain step by step.",
                              " Any tips?", " Cheers.", " Much appreciated!", " Please keep it simple.", " Be concise.")
_CONTEXTS: tuple[str, ...] = (
    "This is for {w}, and I need it within {n} minutes.",
    "Context: I'm doing this for {w} with a team of {n} people.",
    "I've been stuck on this for {n} hours while working on {w}.",
    "It's part of {w}; the deadline is in {n} days.",
    "Some background: it's for {w}, about {n} pages so far.",
    "My manager asked for it as part of {w} (ticket #{n}).",
    "I asked {n} friends from {w} and got different answers.",
    "Please assume a budget of {n} dollars for {w}.",
)
_CONTEXT_WHAT: tuple[str, ...] = ("a school project", "my job", "a side project", "a hackathon",
                                  "a client presentation", "my thesis", "a startup pitch", "a volunteer group",
                                  "a job interview", "my personal blog", "an online course", "a family trip")
_CONTEXT_NUMBERS = 500  # {n} in 2 .. 501
_N_CONTEXT = 1 + len(_CONTEXTS) * len(_CONTEXT_WHAT) * _CONTEXT_NUMBERS  # the first: no context sentence
#: distinct wordings of one template text
_WORDINGS = len(_PREFIXES) * _N_CONTEXT * len(_SUFFIXES)
#: coprime with _WORDINGS, near its golden section: x -> x * stride mod _WORDINGS is a bijection that sends
#: neighbouring x far apart (so consecutive wordings differ in every part)
_WORDING_STRIDE = next(m for m in range(int(_WORDINGS * 0.6180339887), _WORDINGS) if math.gcd(m, _WORDINGS) == 1)


def _worded(base: str, base_id: int, n: int, seed: int) -> str:
    """The ``n``-th distinct wording of the template text ``base`` (0 <= n < _WORDINGS): distinct n give
    distinct texts (a bijection onto (prefix, context, suffix), spread so that neighbours differ)."""
    if not 0 <= n < _WORDINGS:
        raise ValueError(f"demo: more than {_WORDINGS} new queries of one template text")
    c = ((n + base_id * 7919 + seed * 104_729) % _WORDINGS) * _WORDING_STRIDE % _WORDINGS
    c, s = divmod(c, len(_SUFFIXES))
    p, ctx = divmod(c, _N_CONTEXT)
    prefix = _PREFIXES[p]
    if prefix.endswith(", ") and not base.startswith(("I ", "I'")):
        base = base[:1].lower() + base[1:]
    if ctx:
        ctx -= 1
        ctx, num = divmod(ctx, _CONTEXT_NUMBERS)
        tpl, what = divmod(ctx, len(_CONTEXT_WHAT))
        base = f"{base} {_CONTEXTS[tpl].format(w=_CONTEXT_WHAT[what], n=2 + num)}"
    return prefix + base + _SUFFIXES[s]


def distinct_query_rows(q_table: np.ndarray, n_turns: np.ndarray, topic: np.ndarray, template_texts: list[str],
                        share: float, seed: int) -> tuple[np.ndarray, list[str]]:
    """A query stream with ``share`` of its queries new (see :func:`demo_columns`).

    ``q_table`` (G, max turns): each group's template text row per turn, groups in
    stream order; ``n_turns`` and ``topic`` per group.  Returns the new table (rows
    into the returned texts, numbered in order of first appearance) and the texts.
    Vectorised but for one string per new query.

    The stream is read in order, query by query (group, then turn).  Each query is
    new with probability ``share`` (the first of its topic and kind always), and
    is then its template text in the next unused wording of that text.  Otherwise
    it repeats one of the earlier new queries of its topic and kind: the i-th of
    the m so far with i = floor(m u^3), u uniform, so early (popular) queries come
    back most, as the head of a real query log does.
    """
    if not 0.0 <= float(share) <= 1.0:
        raise ValueError(f"distinct_texts: expected a share in [0, 1], got {share!r}")
    n_turns = np.asarray(n_turns, dtype=np.int64)
    pos = np.repeat(np.arange(n_turns.size), n_turns)
    step = np.arange(pos.size) - np.repeat(np.cumsum(n_turns) - n_turns, n_turns)
    base = q_table[pos, step]
    pool = np.asarray(topic, dtype=np.int64)[pos] * 2 + (step > 0)
    rng = np.random.default_rng([int(seed), 0x5EED7E47])
    new = rng.random(pos.size) < float(share)
    u = rng.random(pos.size)
    new[np.unique(pool, return_index=True)[1]] = True  # nothing to repeat before the first
    new_row = np.cumsum(new) - 1  # text row of each new query (order of first appearance)
    row = np.empty(pos.size, np.int64)
    for k in np.unique(pool):
        idx = np.flatnonzero(pool == k)
        nk = new[idx]
        seen = np.cumsum(nk)  # new queries of the pool so far (this one included)
        pick = np.where(nk, seen - 1, np.minimum((seen * u[idx] ** 3).astype(np.int64), seen - 1))
        row[idx] = new_row[idx[nk]][pick]
    # the wording of each new query: its rank among the new queries of the same template text
    first = np.flatnonzero(new)
    b = base[first]
    by = np.argsort(b, kind="stable")
    sb = b[by]
    starts = np.flatnonzero(np.r_[True, sb[1:] != sb[:-1]])
    rank = np.empty(b.size, np.int64)
    rank[by] = np.arange(b.size) - np.repeat(starts, np.diff(np.r_[starts, b.size]))
    texts = [_worded(template_texts[bi], bi, n, seed) for bi, n in zip(b.tolist(), rank.tolist())]
    out = np.zeros_like(q_table)
    out[pos, step] = row
    return out, texts


def _encode_table(enc: TextEncoder, texts: Sequence[str], dtype: str = "float32",
                  chunk: int = 65_536) -> np.ndarray:
    """(len(texts), d) embeddings of ``dtype`` ("float32" or "float16"), encoded in chunks
    straight into the table (no float32 copy of the whole table when it is float16)."""
    if dtype not in ("float32", "float16"):
        raise ValueError(f"text_dtype: expected 'float32' or 'float16', got {dtype!r}")
    np_dtype = np.float16 if dtype == "float16" else np.float32
    out: np.ndarray | None = None
    for s0 in range(0, max(len(texts), 1), chunk):
        part = np.asarray(enc.encode(list(texts[s0:s0 + chunk])), dtype=np.float32)
        if part.ndim != 2 or part.shape[0] != len(texts[s0:s0 + chunk]):
            raise ValueError(f"encoder {enc.name!r} returned an array of shape {part.shape} for "
                             f"{len(texts[s0:s0 + chunk])} texts")
        if out is None:
            out = np.empty((len(texts), part.shape[1]), np_dtype)
        out[s0:s0 + part.shape[0]] = part
    assert out is not None
    return out


class HashedEncoder:
    """A deterministic hashed bag-of-words test encoder (no model, no download).

    Each lower-cased word and each pair of adjacent words adds +-1 to one of
    ``dim`` coordinates chosen by a BLAKE2b hash of the token (the hash's
    first bit is the sign); rows are L2-normalised float32.  Texts that share
    words get similar vectors, so the demo's topics stay separable.

    Why not MiniLM for scale runs: the demo's million interactions are
    template texts, so what is measured is the graph build and training, not
    the encoder; MiniLM costs minutes on 2 cores for texts the benchmark does
    not need to understand, while this encoder runs in milliseconds, is the
    same on every machine and needs no model files.  It is a test encoder:
    its vectors carry no meaning beyond shared words.
    """

    def __init__(self, dim: int = 384) -> None:
        if dim < 2:
            raise ValueError(f"HashedEncoder: dim must be >= 2, got {dim}")
        self.dim = int(dim)
        self.name = f"hashed-bow-{self.dim}"
        self._cache: dict[str, tuple[int, float]] = {}

    #: tokens remembered (a stream of distinct texts has millions of distinct word pairs: past this many
    #: the rest are hashed each time instead of growing the cache without bound)
    CACHE_TOKENS = 1_000_000

    def _slot(self, token: str) -> tuple[int, float]:
        hit = self._cache.get(token)
        if hit is None:
            import hashlib

            h = int.from_bytes(hashlib.blake2b(token.encode("utf-8"), digest_size=8).digest(), "little")
            hit = ((h >> 1) % self.dim, 1.0 if h & 1 else -1.0)
            if len(self._cache) < self.CACHE_TOKENS:
                self._cache[token] = hit
        return hit

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        import re

        find = re.compile(r"[a-z0-9']+").findall
        cache, slot = self._cache, self._slot
        toks: list[str] = []
        counts = np.zeros(len(texts), np.int64)
        for i, text in enumerate(texts):
            words = find(text.lower())
            toks += words
            toks += [f"{a} {b}" for a, b in zip(words, words[1:])]
            counts[i] = 2 * len(words) - 1 if words else 0
        hits = [cache.get(t) or slot(t) for t in toks]
        cols = np.fromiter((h[0] for h in hits), np.int64, len(hits))
        signs = np.fromiter((h[1] for h in hits), np.float64, len(hits))
        cells = np.repeat(np.arange(len(texts), dtype=np.int64) * self.dim, counts) + cols
        # sums of +-1 are exact in any order, so this equals adding token by token
        out = np.bincount(cells, weights=signs, minlength=len(texts) * self.dim).astype(np.float32)
        out = out.reshape(len(texts), self.dim)
        norm = np.sqrt(np.einsum("ij,ij->i", out, out))
        empty = norm == 0
        out[~empty] /= norm[~empty, None]
        out[empty, 0] = 1.0
        return out


def demo_graph(spec_or_size: DemoSpec | str = "tiny", encoder: TextEncoder | None = None, *,
               seed: int | None = None, relations: str | Sequence = "reference", with_text: bool = False,
               distinct_texts: float | None = None, text_dtype: str = "float32"):
    """The demo dataset straight into a :class:`~gmt_model.method.graph.GraphTables`,
    with no JSONL in between: the same groups, splits, ratings and query
    texts as :func:`write_demo_dataset` (the graph equals ``build_graph`` of
    its files when ``with_text``), built column-wise; every distinct query
    text is embedded once.  ``encoder`` defaults to :class:`HashedEncoder`.
    ``with_text`` also keeps question ids and response texts (slow at scale;
    training does not read them).  ``distinct_texts`` and ``text_dtype``: see
    :func:`demo_columns`.  Returns ``(graph, truth)``.
    """
    from gmt_model.method.graph import from_columns

    cols, truth = demo_columns(spec_or_size, encoder, seed=seed, relations=relations, with_text=with_text,
                               distinct_texts=distinct_texts, text_dtype=text_dtype)
    return from_columns(**cols), truth


def demo_columns(spec_or_size: DemoSpec | str = "tiny", encoder: TextEncoder | None = None, *,
                 seed: int | None = None, relations: str | Sequence = "reference", with_text: bool = False,
                 distinct_texts: float | None = None, text_dtype: str = "float32"):
    """The generation half of :func:`demo_graph`: ``(keyword arguments of
    graph.from_columns, truth)``.

    ``distinct_texts``: None keeps the template texts (a bounded set: 3,341
    distinct texts at 1M interactions).  A share F in [0, 1] makes the stream
    look like a real query log instead: each *query* (one turn of one
    comparison group: the K LLMs compared answer the same query, so K
    interactions share it) is new, never seen before in the stream, with
    probability F, and otherwise repeats an earlier query of the same topic and
    kind (first turn or follow-up), popular ones more often (see
    :func:`distinct_query_rows`).  A new query is its group's template text
    with its own wording around it (greeting, context sentence with specifics,
    sign-off), distinct from every other; the first query of each topic and kind
    is always new, so the realised share is F or a hair above it.
    ``text_dtype``: ``"float32"`` or ``"float16"``, the storage of the text
    embeddings (float16 halves the table; the model reads them as float32);
    they are encoded in chunks straight into that table."""
    spec = _resolve_spec(spec_or_size)
    if seed is not None:
        spec = replace(spec, seed=int(seed))
    enc = encoder if encoder is not None else HashedEncoder()
    plan = _build_plan(spec)
    group_users = [plan.user_ids[int(o)] for o in plan.owner]
    split_names = split_groups(group_users, spec.split_fractions, seed=spec.seed)
    order = np.concatenate([np.flatnonzero(split_names == s) for s in SPLITS])  # split files' order
    split_code = np.concatenate([np.full(int((split_names == s).sum()), i, np.int8) for i, s in enumerate(SPLITS)])
    k = plan.k[order].astype(np.int64)
    n_turns = plan.n_turns[order].astype(np.int64)
    # records: k per group; interactions: n_turns per record
    rec_group = np.repeat(np.arange(order.size), k)  # position in `order`
    rec_j = np.arange(rec_group.size) - np.repeat(np.cumsum(k) - k, k)
    rec_split = split_code[rec_group]
    first_of_split = np.searchsorted(rec_split, rec_split, side="left")
    rec_line = np.arange(rec_group.size) - first_of_split + 1
    rec_n = n_turns[rec_group]
    it_rec = np.repeat(np.arange(rec_group.size), rec_n)
    it_step = np.arange(it_rec.size) - np.repeat(np.cumsum(rec_n) - rec_n, rec_n)
    it_pos = rec_group[it_rec]  # group position of each interaction
    g_orig = order[it_pos]
    llm_of = plan.models[g_orig, rec_j[it_rec]]
    raw = plan.rating[g_orig, rec_j[it_rec], it_step].astype(np.float32)
    # ids in order of first appearance (as build_graph assigns them from the files)
    owner = plan.owner[g_orig]
    u_first = np.unique(owner, return_index=True)
    u_order = u_first[0][np.argsort(u_first[1], kind="stable")]
    user_index = np.full(spec.n_users, -1, np.int64)
    user_index[u_order] = np.arange(u_order.size)
    l_first = np.unique(llm_of, return_index=True)
    l_order = l_first[0][np.argsort(l_first[1], kind="stable")]
    llm_index = np.full(len(LLMS), -1, np.int64)
    llm_index[l_order] = np.arange(l_order.size)
    # query texts: one row per distinct text, in order of first appearance
    rows: dict[str, int] = {}
    q_table = np.zeros((order.size, _MAX_TURNS), np.int64)
    for pos, g in enumerate(order.tolist()):
        for t, q in enumerate(_group_queries(plan, g)[0]):
            r = rows.get(q)
            if r is None:
                r = rows[q] = len(rows)
            q_table[pos, t] = r
    texts = list(rows)
    if distinct_texts is not None:
        q_table, texts = distinct_query_rows(q_table, n_turns, plan.topic[order], texts, distinct_texts, spec.seed)
    text_emb = _encode_table(enc, texts, text_dtype)
    llm_names = [LLMS[int(i)] for i in l_order]
    llm_emb = np.asarray(enc.encode([LLM_DESCRIPTIONS[m] for m in llm_names]), dtype=np.float32)
    if text_emb.shape[1] != llm_emb.shape[1]:
        raise ValueError(f"encoder {enc.name!r} returned embeddings of several widths")
    question_id = response_text = None
    if with_text:
        width = plan.qid_width
        question_id = [f"demo-{int(g) + 1:0{width}d}" for g in g_orig.tolist()]
        response_text = []
        for g, j, t in zip(g_orig.tolist(), rec_j[it_rec].tolist(), it_step.tolist()):
            queries, focus = _group_queries(plan, g)
            response_text.append(_response(int(plan.topic[g]), LLMS[int(plan.models[g, j])], t, queries[t], focus,
                                           int(plan.variant[g, j, t])))
    cols = dict(
        user_ids=[plan.user_ids[int(u)] for u in u_order], llm_names=llm_names, llm_emb=llm_emb,
        user=user_index[owner], llm=llm_index[llm_of], group=it_pos, record=it_rec, step=it_step,
        turn=n_turns[it_pos], split=split_code[it_pos], raw_rating=raw, text_emb=text_emb,
        query_row=q_table[it_pos, it_step], texts=texts, question_id=question_id, response_text=response_text,
        line=rec_line[it_rec], relations=relations, encoder=enc.name,
        sources={"demo": json.dumps(spec.to_dict(), sort_keys=True),
                 **({} if distinct_texts is None else {"demo_distinct_texts": str(float(distinct_texts))})})
    return cols, plan.truth


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m gmt_model.data.demo --size tiny --out DIR``"""
    parser = argparse.ArgumentParser(prog="python -m gmt_model.data.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="tiny", choices=sorted(PRESETS), help="preset size (default tiny)")
    parser.add_argument("--out", required=True, help="output folder (data/<dataset>/)")
    parser.add_argument("--seed", type=int, default=None, help="seed (default: the preset's, 0)")
    parser.add_argument("--encoder", default=None, help="encoder name or local folder (default all-MiniLM-L6-v2)")
    parser.add_argument("--cache-dir", default=None, help="embedding cache folder (default $GMTROUTER_CACHE_DIR or ~/.cache/gmtrouter)")
    parser.add_argument("--no-cache", action="store_true", help="do not use the embedding cache")
    parser.add_argument("--allow-download", action="store_true", help="allow downloading a hub encoder")
    parser.add_argument("--count-only", action="store_true", help="only report group and unique query counts")
    args = parser.parse_args(argv)

    spec = DemoSpec.preset(args.size)
    if args.seed is not None:
        spec = replace(spec, seed=args.seed)
    if args.count_only:
        print(json.dumps({"size": args.size, **unique_query_count(spec)}))
        return 0
    from gmt_model.data.encoder import get_encoder

    cache_dir: Any = False if args.no_cache else args.cache_dir
    enc = get_encoder(args.encoder, cache_dir=cache_dir, allow_download=args.allow_download)
    started = time.perf_counter()
    paths = write_demo_dataset(args.out, spec, encoder=enc)
    stats = json.loads(paths["truth"].read_text(encoding="utf-8"))["stats"]
    print(json.dumps({"paths": {k: str(v) for k, v in paths.items()}, "stats": stats,
                      "seconds": round(time.perf_counter() - started, 2)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
