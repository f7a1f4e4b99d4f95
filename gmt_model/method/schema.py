"""The one place that names node types, relations and Parquet columns.

Every other module imports names from here; no other module spells a node
type, relation or column name as a string literal.

Graph layout (see ``docs/architecture.md``): one *interaction* is one
model's answer to one turn of one conversation for one user.  Each
interaction owns exactly one session, one query and one response node, and
they share the interaction's index (``session i``, ``query i`` and
``response i`` all belong to interaction ``i``).  Users and LLMs are shared
nodes.  An edge is *visible* when every interaction-owned endpoint of it
belongs to a visible interaction; this is how predicted ratings are kept
out of the graph.
"""

from __future__ import annotations

from typing import Final

# --------------------------------------------------------------------------
# Node types
# --------------------------------------------------------------------------
USER: Final = "user"
SESSION: Final = "session"
QUERY: Final = "query"
LLM: Final = "llm"
RESPONSE: Final = "response"

NODE_TYPES: Final[tuple[str, ...]] = (USER, SESSION, QUERY, LLM, RESPONSE)
#: node types with one node per interaction (index == interaction index)
INTERACTION_NODE_TYPES: Final[frozenset[str]] = frozenset({SESSION, QUERY, RESPONSE})
#: node types shared across interactions
SHARED_NODE_TYPES: Final[frozenset[str]] = frozenset({USER, LLM})

EdgeType = tuple[str, str, str]

# --------------------------------------------------------------------------
# Relations: the full schema of the method (22 typed, directed relations as
# declared by the reference code; the seed document counts 21).
# Direction is source -> destination; messages flow that way.
# --------------------------------------------------------------------------
USER_OWN_SESSION: Final[EdgeType] = (USER, "own", SESSION)
SESSION_OWNED_BY_USER: Final[EdgeType] = (SESSION, "owned_by", USER)
QUERY_ANSWERED_BY_RESPONSE: Final[EdgeType] = (QUERY, "answered_by", RESPONSE)
RESPONSE_ANSWERED_TO_QUERY: Final[EdgeType] = (RESPONSE, "answered_to", QUERY)
SESSION_NEXT_SESSION: Final[EdgeType] = (SESSION, "next", SESSION)  # earlier -> later turn
SESSION_PREV_SESSION: Final[EdgeType] = (SESSION, "prev", SESSION)  # later -> earlier turn
QUERY_NEXT_QUERY: Final[EdgeType] = (QUERY, "next", QUERY)
QUERY_PREV_QUERY: Final[EdgeType] = (QUERY, "prev", QUERY)
LLM_RECEIVE_QUERY: Final[EdgeType] = (LLM, "receive", QUERY)
LLM_GENERATE_RESPONSE: Final[EdgeType] = (LLM, "generate", RESPONSE)
LLM_RESPONSE_TO_SESSION: Final[EdgeType] = (LLM, "response_to", SESSION)
SESSION_CALL_LLM: Final[EdgeType] = (SESSION, "call", LLM)
QUERY_TO_LLM: Final[EdgeType] = (QUERY, "to", LLM)
RESPONSE_GENERATED_BY_LLM: Final[EdgeType] = (RESPONSE, "generated_by", LLM)
USER_ASK_QUERY: Final[EdgeType] = (USER, "ask", QUERY)
QUERY_ASKED_BY_USER: Final[EdgeType] = (QUERY, "asked_by", USER)
USER_RECEIVE_RESPONSE: Final[EdgeType] = (USER, "receive", RESPONSE)
RESPONSE_BACK_TO_USER: Final[EdgeType] = (RESPONSE, "back_to", USER)
SESSION_INCLUDE_QUERY: Final[EdgeType] = (SESSION, "include", QUERY)
QUERY_INCLUDED_BY_SESSION: Final[EdgeType] = (QUERY, "included_by", SESSION)
SESSION_INCLUDE_RESPONSE: Final[EdgeType] = (SESSION, "include", RESPONSE)
RESPONSE_INCLUDED_BY_SESSION: Final[EdgeType] = (RESPONSE, "included_by", SESSION)

FULL_RELATIONS: Final[tuple[EdgeType, ...]] = (
    USER_OWN_SESSION,
    SESSION_OWNED_BY_USER,
    QUERY_ANSWERED_BY_RESPONSE,
    RESPONSE_ANSWERED_TO_QUERY,
    SESSION_NEXT_SESSION,
    SESSION_PREV_SESSION,
    QUERY_NEXT_QUERY,
    QUERY_PREV_QUERY,
    LLM_RECEIVE_QUERY,
    LLM_GENERATE_RESPONSE,
    LLM_RESPONSE_TO_SESSION,
    SESSION_CALL_LLM,
    QUERY_TO_LLM,
    RESPONSE_GENERATED_BY_LLM,
    USER_ASK_QUERY,
    QUERY_ASKED_BY_USER,
    USER_RECEIVE_RESPONSE,
    RESPONSE_BACK_TO_USER,
    SESSION_INCLUDE_QUERY,
    QUERY_INCLUDED_BY_SESSION,
    SESSION_INCLUDE_RESPONSE,
    RESPONSE_INCLUDED_BY_SESSION,
)

#: The five relations the reference materialises when it trains: messages
#: flow from (query, llm, rating) into the session, from a session into the
#: previous session of the same model track, and from sessions into the user.
REFERENCE_RELATIONS: Final[tuple[EdgeType, ...]] = (
    QUERY_INCLUDED_BY_SESSION,
    LLM_RESPONSE_TO_SESSION,
    RESPONSE_INCLUDED_BY_SESSION,
    SESSION_OWNED_BY_USER,
    SESSION_PREV_SESSION,
)

RELATION_SETS: Final[dict[str, tuple[EdgeType, ...]]] = {
    "reference": REFERENCE_RELATIONS,
    "full": FULL_RELATIONS,
}


def relation_key(edge_type: EdgeType) -> str:
    """File-system and config friendly name: ``src__rel__dst``."""
    return "__".join(edge_type)


def parse_relation_key(key: str) -> EdgeType:
    parts = key.split("__")
    if len(parts) != 3:
        raise ValueError(f"relation key {key!r} is not of the form src__rel__dst")
    et = (parts[0], parts[1], parts[2])
    if et not in FULL_RELATIONS:
        raise ValueError(f"unknown relation {key!r}; known: {[relation_key(r) for r in FULL_RELATIONS]}")
    return et


def resolve_relations(spec: str | list | tuple) -> tuple[EdgeType, ...]:
    """Turn a configuration value into relations.

    ``spec`` is a set name (``"reference"`` or ``"full"``) or a list of
    relation keys (``"query__included_by__session"``) or triples.
    """
    if isinstance(spec, str):
        if spec not in RELATION_SETS:
            raise ValueError(f"unknown relation set {spec!r}; expected one of {sorted(RELATION_SETS)} or a list")
        return RELATION_SETS[spec]
    out: list[EdgeType] = []
    for item in spec:
        et = parse_relation_key(item) if isinstance(item, str) else tuple(item)
        if et not in FULL_RELATIONS:
            raise ValueError(f"unknown relation {et!r}")
        if et not in out:
            out.append(et)  # type: ignore[arg-type]
    if not out:
        raise ValueError("relation list is empty")
    return tuple(out)  # type: ignore[return-value]


# --------------------------------------------------------------------------
# JSONL field names (the GMTRouter format)
# --------------------------------------------------------------------------
F_JUDGE: Final = "judge"
F_MODEL: Final = "model"
F_QUESTION_ID: Final = "question_id"
F_TURN: Final = "turn"
F_CONVERSATION: Final = "conversation"
F_MODEL_EMB: Final = "model_emb"
F_ENCODER: Final = "encoder"
F_QUERY: Final = "query"
F_QUERY_EMB: Final = "query_emb"
F_RESPONSE: Final = "response"
F_RATING: Final = "rating"

# --------------------------------------------------------------------------
# Parquet tables and columns
# --------------------------------------------------------------------------
T_USERS: Final = "users"
T_LLMS: Final = "llms"
T_QUERIES: Final = "queries"
T_SESSIONS: Final = "sessions"
T_RESPONSES: Final = "responses"
T_INTERACTIONS: Final = "interactions"
T_PAIRS: Final = "pairs"
T_GROUPS: Final = "groups"
EDGE_DIR: Final = "edges"
META_FILE: Final = "graph_meta.json"

# users
C_USER_IDX: Final = "user_idx"
C_USER_ID: Final = "user_id"
# llms
C_LLM_IDX: Final = "llm_idx"
C_LLM_NAME: Final = "llm_name"
C_EMBEDDING: Final = "embedding"
# interactions / sessions / queries / responses (index shared)
C_INTERACTION_IDX: Final = "interaction_idx"
C_SESSION_IDX: Final = "session_idx"
C_QUERY_IDX: Final = "query_idx"
C_RESPONSE_IDX: Final = "response_idx"
C_GROUP_IDX: Final = "group_idx"
C_RECORD_IDX: Final = "record_idx"
C_STEP: Final = "step"  # 0-based position of the turn inside its conversation
C_TURN: Final = "turn"  # the record's turn field
C_QUESTION_ID: Final = "question_id"
C_QUERY_TEXT: Final = "query_text"
C_RESPONSE_TEXT: Final = "response_text"
C_RATING: Final = "rating"  # normalised to [0, 1]
C_RAW_RATING: Final = "raw_rating"
C_PREV_INTERACTION: Final = "prev_interaction_idx"  # -1 when first turn
C_LINE: Final = "line"  # 1-based JSONL line of the record
C_SPLIT: Final = "split"
SPLIT_TRAIN: Final = "training"
SPLIT_VALID: Final = "valid"
SPLIT_TEST: Final = "test"
SPLITS: Final[tuple[str, ...]] = (SPLIT_TRAIN, SPLIT_VALID, SPLIT_TEST)
#: file names of the splits inside data/<dataset>/
SPLIT_FILES: Final[dict[str, str]] = {
    SPLIT_TRAIN: "training_set.jsonl",
    SPLIT_VALID: "valid_set.jsonl",
    SPLIT_TEST: "test_set.jsonl",
}
# groups
C_GROUP_SIZE: Final = "group_size"
# pairs
C_PAIR_IDX: Final = "pair_idx"
C_A: Final = "interaction_a"
C_B: Final = "interaction_b"
C_LABEL: Final = "label"  # 1.0 a wins, 0.0 b wins, 0.5 tie
# edges
C_SRC: Final = "src"
C_DST: Final = "dst"

__all__ = [name for name in dir() if name.isupper() or name in {
    "EdgeType", "relation_key", "parse_relation_key", "resolve_relations"}]
