"""HeteroGNN (HGT layers) and the cross-attention PreferencePredictor."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn
from torch_geometric.nn import HGTConv
from torch_geometric.utils.hetero import construct_bipartite_edge_index

from gmt_model.method import schema as S

__all__ = ["ModelConfig", "HeteroGNN", "PreferencePredictor", "GMTModel", "FastHGTConv"]


class FastHGTConv(HGTConv):
    """``HGTConv`` with the relation-specific key/value transforms as one
    batched matmul per edge type.

    PyG's version stacks every source node of every relation and head, then
    fills the output slice by slice (``HeteroLinear.forward_naive`` without
    pyg-lib); its backward copies the whole gradient once per slice
    (heads x relations times).  Same parameters, same outputs, same
    state-dict names; only the arithmetic layout differs.
    """

    def _construct_src_node_feat(self, k_dict, v_dict, edge_index_dict):
        heads = self.heads
        n_types = len(self.edge_types)
        wk, wv = self.k_rel.weight, self.v_rel.weight  # (heads * n_types, D, D)
        ks, vs, offset, cumsum = [], [], {}, 0
        for edge_type in edge_index_dict.keys():
            src = edge_type[0]
            offset[edge_type] = cumsum
            cumsum += k_dict[src].size(0)
            idx = torch.arange(heads, device=wk.device) * n_types + self.edge_types_map[edge_type]
            ks.append(torch.einsum("nhd,hde->nhe", k_dict[src], wk[idx]))
            vs.append(torch.einsum("nhd,hde->nhe", v_dict[src], wv[idx]))
        return torch.cat(ks, dim=0), torch.cat(vs, dim=0), offset

    def forward(self, x_dict: dict[str, Tensor], edge_index_dict: dict[S.EdgeType, Tensor],
                outputs: set[str] | None = None, rows: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        """``HGTConv.forward`` computing only what some output reads: keys and values
        of the node types that are a source of ``edge_index_dict``, queries of the
        destination types, and the outputs of the destination types (only those in
        ``outputs`` when given).  The outputs computed equal ``HGTConv``'s.

        ``rows``: for some node types, ``x_dict`` holds the distinct input rows and
        ``rows[t]`` the row of each node (nodes with the same input share one row:
        in the first layer every session and user node, each query text, each
        rating).  Keys, values and queries are then computed once per distinct row;
        the outputs are per node, as if ``x_dict[t][rows[t]]`` had been given."""
        f, heads = self.out_channels, self.heads
        d = f // heads
        rows = rows or {}

        def per_node(t: str, a: Tensor) -> Tensor:
            return a if t not in rows else a[rows[t]]

        dst = [t for t in x_dict if t in self.dst_node_types and (outputs is None or t in outputs)]
        src = {et[0] for et in edge_index_dict}
        k_dict, q_dict, v_dict = {}, {}, {}
        for t, x in x_dict.items():
            lin = self.kqv_lin.lins[t]
            w, b = lin.weight, lin.bias
            if t in src:
                if t in dst:
                    k, q, v = torch.tensor_split(lin(x), 3, dim=1)
                    q_dict[t] = per_node(t, q).reshape(-1, heads, d)
                else:
                    k, v = torch.tensor_split(
                        nn.functional.linear(x, torch.cat([w[:f], w[2 * f:]]), torch.cat([b[:f], b[2 * f:]])), 2, dim=1)
                k_dict[t], v_dict[t] = k.reshape(-1, heads, d), v.reshape(-1, heads, d)
            elif t in dst:
                q_dict[t] = per_node(t, nn.functional.linear(x, w[f:2 * f], b[f:2 * f])).reshape(-1, heads, d)
        # a source node's key and value are its row's: edges leave from rows
        edges = {et: (e if et[0] not in rows else torch.stack([rows[et[0]][e[0]], e[1]]))
                 for et, e in edge_index_dict.items() if et[2] in q_dict}
        if not q_dict:
            return {}
        q, dst_offset = self._cat(q_dict)
        if edges:
            k, v, src_offset = self._construct_src_node_feat(k_dict, v_dict, edges)
            edge_index, edge_attr = construct_bipartite_edge_index(
                edges, src_offset, dst_offset, edge_attr_dict=self.p_rel, num_nodes=k.size(0))
            out = self.propagate(edge_index, k=k, q=q, v=v, edge_attr=edge_attr, size=(k.size(0), q.size(0)))
        else:
            out = q.new_zeros(q.size(0), f)
        a_dict = self.out_lin({t: nn.functional.gelu(out[dst_offset[t]:dst_offset[t] + q_dict[t].size(0)])
                               for t in q_dict})
        result = {}
        for t, a in a_dict.items():
            if a.size(-1) == x_dict[t].size(-1):
                alpha = self.skip[t].sigmoid()
                a = alpha * a + (1 - alpha) * per_node(t, x_dict[t])
            result[t] = a
        return result


@dataclass
class ModelConfig:
    """Architecture hyper-parameters (stored in every checkpoint)."""

    embed_dim: int  # width of query / llm embeddings
    hidden_dim: int = 128
    num_gnn_layers: int = 2
    heads: int = 4
    dropout: float = 0.1
    predictor_dim: int = 256
    predictor_heads: int = 4
    personalization: bool = True
    #: centre and scale query / LLM embeddings with statistics of the training
    #: data (stored as buffers in the checkpoint).  Sentence-encoder outputs are
    #: unit vectors whose entries are ~1/sqrt(d); without this the input
    #: projections start from a signal far below their bias and training stalls.
    #: ``False`` feeds the raw embeddings as the reference does.
    normalize_inputs: bool = True
    relations: list[str] = field(default_factory=lambda: [S.relation_key(r) for r in S.REFERENCE_RELATIONS])

    def __post_init__(self) -> None:
        if self.hidden_dim % self.heads:
            raise ValueError(f"hidden_dim {self.hidden_dim} must be divisible by heads {self.heads}")
        if self.predictor_dim % self.predictor_heads:
            raise ValueError(f"predictor_dim {self.predictor_dim} must be divisible by predictor_heads {self.predictor_heads}")
        if self.num_gnn_layers < 1:
            raise ValueError("num_gnn_layers must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError("dropout must be in [0, 1)")
        self.relations = [S.relation_key(r) for r in S.resolve_relations(self.relations)]

    @property
    def edge_types(self) -> tuple[S.EdgeType, ...]:
        return S.resolve_relations(self.relations)

    def to_dict(self) -> dict:
        return asdict(self)


class HeteroGNN(nn.Module):
    """Input projections, then L x (HGTConv -> dropout -> LayerNorm).

    User and session nodes start from zero features in the method; a zero
    vector through a linear layer is its bias, so they start from a learned
    per-type vector.  Response nodes carry ``rating x ones(d)``; its linear
    projection is ``rating * W.sum(1) + b``, i.e. a ``Linear(1, h)`` of the rating.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        h = cfg.hidden_dim
        self.cfg = cfg
        self.edge_types = cfg.edge_types
        self.node_types = list(S.NODE_TYPES)
        self.query_in = nn.Linear(cfg.embed_dim, h)
        self.llm_in = nn.Linear(cfg.embed_dim, h)
        self.response_in = nn.Linear(1, h)
        self.user_start = nn.Parameter(torch.zeros(h))
        self.session_start = nn.Parameter(torch.zeros(h))
        nn.init.normal_(self.user_start, std=0.02)
        nn.init.normal_(self.session_start, std=0.02)
        metadata = (self.node_types, list(self.edge_types))
        self.convs = nn.ModuleList(FastHGTConv(h, h, metadata, heads=cfg.heads) for _ in range(cfg.num_gnn_layers))
        self.norms = nn.ModuleList(
            nn.ModuleDict({t: nn.LayerNorm(h) for t in self.node_types}) for _ in range(cfg.num_gnn_layers))
        self.dropout = nn.Dropout(cfg.dropout)
        d = cfg.embed_dim
        self.register_buffer("query_mean", torch.zeros(d))
        self.register_buffer("query_scale", torch.ones(()))
        self.register_buffer("llm_mean", torch.zeros(d))
        self.register_buffer("llm_scale", torch.ones(()))

    @torch.no_grad()
    def set_input_stats(self, query_emb: Tensor, llm_emb: Tensor) -> None:
        """Fix the input normalisation from training data (no-op when disabled)."""
        if not self.cfg.normalize_inputs:
            return
        for name, x in (("query", query_emb), ("llm", llm_emb)):
            x = x.float()
            mean = x.mean(dim=0)
            scale = (x - mean).pow(2).mean().sqrt().clamp_min(1e-6)
            getattr(self, f"{name}_mean").copy_(mean)
            getattr(self, f"{name}_scale").copy_(scale)

    def project_query(self, emb: Tensor) -> Tensor:
        return self.query_in((emb - self.query_mean) / self.query_scale)

    def project_llm(self, emb: Tensor) -> Tensor:
        return self.llm_in((emb - self.llm_mean) / self.llm_scale)

    def input_tables(self, num_users: int, num_interactions: int, query_x: Tensor, query_of: Tensor,
                     llm_emb: Tensor, rating_values: Tensor, rating_of: Tensor
                     ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Projected input features as distinct rows and the row of each node (see
        ``FastHGTConv.forward``'s ``rows``): one row for all users and one for all
        sessions (zero features through a linear layer: a learned per-type vector), the
        projected query texts (``query_x``, ``query_of``), one row per distinct rating
        (``rating_values``, ``rating_of``; 0 for hidden responses).  The projection of
        ``rating * ones(d)`` is ``rating * (W @ ones) + b``: a ``Linear(1, h)`` of the rating."""
        dev = query_x.device
        x = {S.USER: self.user_start[None], S.SESSION: self.session_start[None], S.QUERY: query_x,
             S.LLM: self.project_llm(llm_emb), S.RESPONSE: self.response_in(rating_values[:, None])}
        rows = {S.USER: torch.zeros(num_users, dtype=torch.long, device=dev),
                S.SESSION: torch.zeros(num_interactions, dtype=torch.long, device=dev),
                S.QUERY: query_of, S.RESPONSE: rating_of}
        return x, rows

    def input_features(self, num_users: int, num_interactions: int, query_emb: Tensor,
                       llm_emb: Tensor, rating: Tensor) -> dict[str, Tensor]:
        """Projected input features, one row per node (:meth:`input_tables` expanded)."""
        every = torch.arange(num_interactions, device=query_emb.device)
        x, rows = self.input_tables(num_users, num_interactions, self.project_query(query_emb), every,
                                    llm_emb, rating, every)
        return {t: v[rows[t]] if t in rows else v for t, v in x.items()}

    def isolated(self, node_type: str, x: Tensor) -> Tensor:
        """Outputs of ``node_type`` nodes that have no incoming edges, from their
        projected inputs ``x``: exactly what :meth:`forward` gives such nodes
        (HGTConv's message sum is 0, so its output is ``a_lin(gelu(0))`` mixed
        with the input by the skip gate; then dropout and LayerNorm)."""
        for conv, norms in zip(self.convs, self.norms):
            if node_type not in conv.dst_node_types:
                continue
            lin = conv.out_lin.lins[node_type]
            a = lin(x.new_zeros(1, lin.in_channels))
            alpha = conv.skip[node_type].sigmoid()
            x = norms[node_type](self.dropout(alpha * a + (1 - alpha) * x))
        return x

    def forward(self, x_dict: dict[str, Tensor], edge_index_dict: dict[S.EdgeType, Tensor]) -> dict[str, Tensor]:
        for conv, norms in zip(self.convs, self.norms):
            out = conv(x_dict, edge_index_dict)
            new = dict(x_dict)
            for t, v in out.items():
                if v is not None:
                    new[t] = norms[t](self.dropout(v))
            x_dict = new
        return x_dict


class PreferencePredictor(nn.Module):
    """Each candidate LLM attends over the context [user, query].

    ``forward(user (B,H), query (B,H), llm (B,M,H)) -> scores (B,M)``: one
    call scores every candidate of every (user, query) in the batch.
    """

    def __init__(self, in_dim: int, dim: int = 256, heads: int = 4, dropout: float = 0.1,
                 personalization: bool = True) -> None:
        super().__init__()
        self.personalization = personalization
        self.user_proj = nn.Linear(in_dim, dim)
        self.query_proj = nn.Linear(in_dim, dim)
        self.llm_proj = nn.Linear(in_dim, dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.head = nn.Sequential(nn.ReLU(), nn.Dropout(dropout), nn.Linear(2 * dim, 1))

    def forward(self, user: Tensor, query: Tensor, llm: Tensor) -> Tensor:
        if not self.personalization:
            user = torch.zeros_like(user)
        ctx = torch.stack([self.user_proj(user), self.query_proj(query)], dim=1)  # (B, 2, D)
        cand = self.llm_proj(llm)  # (B, M, D)
        att, _ = self.attn(cand, ctx, ctx, need_weights=False)
        return self.head(torch.cat([att, cand], dim=-1)).squeeze(-1)


class GMTModel(nn.Module):
    """HeteroGNN + PreferencePredictor."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.gnn = HeteroGNN(cfg)
        self.predictor = PreferencePredictor(cfg.hidden_dim, cfg.predictor_dim, cfg.predictor_heads,
                                             cfg.dropout, cfg.personalization)

    def embed(self, num_users: int, query_emb: Tensor, llm_emb: Tensor, rating: Tensor,
              edge_index_dict: dict[S.EdgeType, Tensor]) -> dict[str, Tensor]:
        """Node representations of a (sub)graph whose interaction nodes are
        the rows of ``query_emb``/``rating`` (local indices)."""
        x = self.gnn.input_features(num_users, query_emb.shape[0], query_emb, llm_emb, rating)
        edges = {et: edge_index_dict[et] for et in self.gnn.edge_types if et in edge_index_dict}
        return self.gnn(x, edges)

    def score(self, user_vec: Tensor, query_vec: Tensor, llm_vec: Tensor) -> Tensor:
        return self.predictor(user_vec, query_vec, llm_vec)
