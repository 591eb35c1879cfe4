"""``harden``: copy -> trace -> resolve rules -> insert quantizers and noise -> recompile.

Also ``harden_report``; the noise verbs (``noise_sites``, ``set_noise``, ``set_weight_noise``,
``seed_noise``) live in ``fxharden.core.noise.verbs`` and are re-exported here.
"""

from __future__ import annotations

import copy
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import fx, nn

from .config import AutocastOutput, Frontend, HardenConfig, Scaling, SiteKind
from .dropin import adopt_interface
from .export import ExportError, capture_export
from .hardened import HardenedModule, HardenReport, SiteInfo, build_hardened
from .input_guard import insert_input_guards
from .ledger import build_ledger
from .layers import HARDENED_LAYERS, HardenedCall, can_harden_weights, harden_layer, output_axis, weight_axis
from .module_route import LayerCandidate, LayerSite, attach_site, find_layers
from .noise import Noise, weight_noise_for
from .noise.verbs import (check_hardened, noise_sites, seed_noise, set_noise, set_weight_noise,  # noqa: F401
                          weight_noise_modules)  # the verbs, re-exported
from .converters import add_bias, check_converter_config, converter, split_layer_bias, split_site_bias
from .out_scale import bind_out_scale, site_weight
from .passes import ensure_container, insert_site_modules, key_for
from .placement import model_placement, place_modules
from .quant import ActQuant, WeightQuant
from .recurrent import harden_recurrent, product_sites
from .recurrent_export import call_hardened_recurrent, recurrent_call
from .signature import call_spec
from .layer_kinds import module_unsigned
from .sites import _RECURRENT_EXPORT, _WEIGHT_KINDS, Site, check_rules, find_sites, node_description, resolve_rule
from .trace import OPAQUE_ROOT, Capture, capture, route_note
from .weight_calls import expert_weights, weight_arg

__all__ = ["harden", "HardenedModule", "SiteInfo", "HardenReport", "noise_sites", "set_noise",
           "set_weight_noise", "seed_noise", "harden_report"]


def _copy_model(model: nn.Module) -> nn.Module:
    """``copy.deepcopy``, also for models that cache non-leaf tensors (e.g. attention-bias
    caches filled by an eval forward), which deepcopy refuses: those are copied detached."""
    memo: Dict[int, Any] = {}

    def visit(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            if value.grad_fn is not None:
                memo[id(value)] = value.detach().clone()
        elif isinstance(value, dict):
            for v in value.values():
                visit(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                visit(v)

    for module in model.modules():
        for name, value in vars(module).items():
            if not name.startswith("_"):  # plain attributes; parameters/buffers are leaves
                visit(value)
    return copy.deepcopy(model, memo)


def _user_leaves(graph: fx.Graph, modules: Dict[str, nn.Module], config: HardenConfig) -> set:
    """call_module targets that the user declared leaf modules (they count as opaque layers)."""
    types = tuple(m for m in config.leaf_modules if isinstance(m, type))
    names = {m for m in config.leaf_modules if isinstance(m, str)}
    return {n.target for n in graph.nodes if n.op == "call_module"
            and (n.target in names or isinstance(modules[n.target], types))}


def _weight_modules(site: Site, root: nn.Module) -> List[tuple]:
    """(dotted name, module) of the layers whose weights a site quantizes."""
    if site.node.op != "call_module":
        return []
    target = str(site.node.target)
    if site.kind is SiteKind.OPAQUE:
        return [(f"{target}.{n}" if n else target, m) for n, m in root.get_submodule(target).named_modules()]
    return [(target, root.get_submodule(target))]


def _inside(scope: str, layers: set) -> bool:
    """Whether the module path ``scope`` is one of ``layers`` or inside one."""
    return any(scope == p or scope.startswith(f"{p}.") for p in layers)


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, attr, module)


_UNSET: Any = object()
"""Default of ``harden``'s ``scale``/``sigma``: tells "not given" from an explicit value."""


def harden(
    model: nn.Module,
    bits: Optional[int] = None,
    scale: Optional[float] = _UNSET,
    *,
    sigma: float = _UNSET,
    config: Optional[HardenConfig] = None,
    example_inputs: Any = None,
    **config_kwargs: Any,
) -> HardenedModule:
    """Return a copy of ``model`` with fake-quantization and noise nodes in its graph.

    Args:
        model: any ``nn.Module``; it is never modified.
        bits: bit width of weights and activations (2..16), or ``None`` for no quantization.
        scale: the constant step ``s`` of every post-activation quantizer (default 1.0), or
            ``None`` for dynamic (learned) scaling.
        sigma: initial noise strength at every noise site.
        config: a full ``HardenConfig``; excludes ``bits``/``scale``/``sigma``.
        example_inputs: the inputs of one forward pass (a tensor, a tuple of positional
            arguments or a dict of keyword arguments, e.g. ``{"input_ids": ids}``), for the
            torch.export frontend (``frontend="export"``, or ``"auto"`` when torch.fx leaves parts
            of the model opaque). The hardened model then takes the same tensor inputs, with
            any batch size (and any sequence length for integer inputs) unless the model's
            code fixes one: then it refuses other shapes (``InputShapeError``, see
            ``fxharden.core.input_guard``; ``harden_report(hm).note`` says so).
        **config_kwargs: other ``HardenConfig`` fields (``rules``, ``leaf_modules``,
            ``strict``, ``weight_noise``, ``frontend``) for the keyword form.

    Returns:
        A ``HardenedModule`` in the same train/eval mode as ``model``.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``, or is already hardened.
        ValueError: invalid bits/scale/sigma (the message says the valid range),
            ``config`` given together with ``bits``/``scale``/``sigma``/config fields, or a
            ``SiteRules.by_name`` key or ``by_regex`` pattern that matches no site (the message
            lists close matches).
        UntraceableModelError: with ``strict=True``, when a submodule cannot be traced.
        ExportError: ``frontend="export"`` and torch.export cannot capture the model with
            ``example_inputs`` (the message names the inputs and what to do).
        ModelPlacementError: the model's tensors are on several devices (see
            ``fxharden.core.placement``: the new modules are made on the model's device).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"harden expects a torch.nn.Module, got {type(model).__name__}")
    if isinstance(model, HardenedModule):
        raise TypeError("this model is already hardened; harden the original model, or change "
                        "noise with fxharden.set_noise")
    if config is None:
        config = HardenConfig.from_shorthand(bits=bits, scale=1.0 if scale is _UNSET else scale,
                                             sigma=0.0 if sigma is _UNSET else sigma, **config_kwargs)
    else:
        given = [name for name, value in (("bits", bits), ("scale", scale), ("sigma", sigma))
                 if value is not _UNSET and not (name == "bits" and value is None)] + sorted(config_kwargs)
        if given:
            raise ValueError(f"harden got config=HardenConfig(...) and also {', '.join(given)}; the config "
                             "already holds these: pass only config (change it with config.replace(...)), "
                             "or only the keyword form (bits, scale, sigma, ...)")

    device, dtype = model_placement(model)
    cap, copy = _capture(model, config, example_inputs)
    params, model_modules = list(copy.named_parameters()), dict(copy.named_modules())
    buffers = {id(b): n for n, b in copy.named_buffers()}
    del copy
    root = cap.root
    modules = cap.layers or dict(root.named_modules())
    # the module route: the known layers inside each opaque part become sites of their own
    taken = {id(modules[n.target]) for g in cap.graphs.values() for n in g.nodes if n.op == "call_module"}
    inner = find_layers(root, [p for p in cap.opaque if p in modules], taken,
                        strip=OPAQUE_ROOT if cap.wrapped else "")
    routed: set = set()
    container = ensure_container(root)
    made: Dict[str, nn.Module] = {}  # container key per (site name, role); shared by both graphs
    owners: set = set()  # noise modules whose input ownership is decided
    skipped: Dict[str, str] = {}
    infos: Dict[str, SiteInfo] = {}
    converted: List[str] = []  # sites with an ADC or DAC

    def module_for(site: str, role: str, build) -> str:
        if (site, role) not in made:
            key = key_for(f"{site}.{role}" if role != "noise" else site, container)
            container[key] = build()
            made[(site, role)] = key
        return f"fxharden.{made[(site, role)]}"

    expert_layers = {n for n, m in modules.items() if expert_weights(m)} if cap.route == "export" else set()
    found = {mode: find_sites(graph, modules, config, set(cap.opaque) | _user_leaves(graph, modules, config))
             for mode, graph in cap.graphs.items() if not (mode is False and graph is cap.graphs[True])}
    check_rules(config, [site.name for sites in found.values() for site in sites]
                + [c.name for layers in inner.values() for c in layers]
                + [f"{n}.{s}" for n, m in _recurrent_layers(found, inner, root) for s in product_sites(m)])
    graphs = {}
    for mode, sites in found.items():
        graph = cap.graphs[mode]
        insertions, before, calls = [], [], []
        for site in sites:
            part = str(site.node.target)
            if site.kind is SiteKind.OPAQUE and inner.get(part):
                # its layers are its sites: no site on its output, which may not even be a tensor
                if part not in routed:
                    routed.add(part)
                    for info in _route_layers(root, inner[part], config, skipped, converted):
                        infos.setdefault(info.name, info)
                continue
            if site.kind is SiteKind.RECURRENT and site.node.op == "call_module":
                for info in _harden_recurrent(root, str(site.node.target), site.name, site.kind, site.quantize_weights,
                                              site.weight_noise, site.noise, config, skipped, cap.route):
                    infos.setdefault(info.name, info)
                continue
            if site.kind is SiteKind.RECURRENT and cap.route == "export" and site.module is not None:
                rows = _harden_recurrent_call(root, site, config, skipped)
                for info in rows:
                    infos.setdefault(info.name, info)
                if rows:
                    continue
            targets = []
            qname = ""
            if site.quantize_output:
                targets.append(module_for(site.name, "quant", lambda: _output_quant(config, site.kind, site.signed)))
                qname = str(container[made[(site.name, "quant")]].extra_repr())
            if site.noise:
                targets.append(module_for(site.name, "noise", lambda: _output_noise(config, site.name)))
                noise = container[made[(site.name, "noise")]]
                if noise.model.needs_out_scale and not noise.has_out_scale:
                    bind_out_scale(noise, config, site.name, site.kind, site_weight(site, root))
                # its input: the quantizer's new tensor, or the node's own result when that is new
                # (in every graph that uses the module)
                owned = site.quantize_output or site.fresh
                noise.owns_input = owned and (noise.owns_input or noise not in owners)
                owners.add(noise)
                if site.module is not None and not site.quantize_output:
                    noise._producer = (site.module,)
                if _inside(site.node.meta.get("scope", ""), expert_layers):
                    noise.unbatched = "its tensors hold the tokens regrouped by expert, not by batch group"
            converts = _converts(site.kind, site.noise, site.quantize_weights)
            if converts and config.adc is not None:
                targets.append(module_for(site.name, "adc", lambda: converter(config.adc, site.name)))
            if converts and config.dac is not None:
                before.append((site.node, module_for(site.name, "dac", lambda: converter(config.dac, site.name))))
            if converts and (config.adc is not None or config.dac is not None):
                converted.append(site.name)
            if targets:
                insertions.append((site.node, targets))
            if (site.quantize_weights or site.weight_noise) and site.weight_calls:
                for i, call in enumerate(site.weight_calls):
                    role = "weights" if i == 0 else f"weights_{i}"
                    label = site.name if i == 0 else f"{site.name}_{i}"
                    calls.append((call, module_for(site.name, role, lambda: _hardened_call(site, call, label, config))))
                    wq = container[made[(site.name, role)]].weight_quant
                    qname = f"weights {wq.extra_repr()}" if wq is not None else qname
            elif site.quantize_weights or site.weight_noise:
                qname = _harden_weights(root, site, config, skipped) or qname
            if converts and config.adc is not None and config.adc.before_bias:
                # after the weights are hardened: the layer (swapped or not) leaves its bias out
                split = split_site_bias(root, site.node, site.name, lambda path, layer: _set_submodule(root, path, layer))
                if split is not None:
                    targets.append((add_bias, split))
            if site.skip_weights:
                skipped[site.name] = site.skip_weights
            infos.setdefault(site.name, SiteInfo(site.name, site.kind.value, node_description(site.node, site.module),
                                                 qname, site.noise, cap.opaque.get(str(site.node.target), ""),
                                                 route=cap.route))
        insert_site_modules(graph, insertions, before, calls)
        graphs[mode] = graph
    graphs.setdefault(False, graphs[True])
    check_converter_config(config, dict.fromkeys(converted))
    insert_input_guards(root, graphs, container)
    place_modules([m for m in root.modules() if isinstance(m, (ActQuant, Noise))], device, dtype)

    hardens = bool(config.quant is not None and config.quant.quantize_weights) or config.perturbs_weights
    ledger = build_ledger(params, buffers, model_modules, root, graphs.values(), modules, skipped,
                          cap.route == "export", hardens, cap.opaque)
    opaque = {p: route_note(why, [c.kind.value for c in inner.get(p, ())]) for p, why in cap.opaque.items()}
    report = HardenReport(sites=tuple(infos.values()), opaque=opaque, skipped=skipped,
                          frontend="export" if cap.route == "export" else "fx", note=cap.note, ledger=ledger)
    hm = build_hardened(root, graphs, model.training, f"Hardened{type(model).__name__}",
                        {"fxharden": {"config": config, "report": report, "example": cap.example},
                         "fxharden_call": call_spec(model, cap, example_inputs)})
    adopt_interface(hm, model)  # the original class's methods and attributes (embed(x), device, ...)
    if config.noise.sigma:
        set_noise(hm, config.noise.sigma)
    return hm


def _capture(model: nn.Module, config: HardenConfig, example_inputs: Any) -> Tuple[Capture, nn.Module]:
    """The graph of a copy of ``model`` by the configured frontend (``Frontend``), and that
    copy (whose parameters the graph holds). Each capture runs on a fresh copy, so a frontend
    that fails leaves nothing behind for the next (torch.export runs the model's code on fake
    tensors)."""
    if config.frontend is Frontend.EXPORT:
        if example_inputs is None:
            raise ValueError("frontend='export' needs example_inputs: the inputs of one forward pass, e.g. "
                             "harden(model, ..., frontend='export', example_inputs={'input_ids': ids})")
        copy = _copy_model(model)
        return capture_export(copy, example_inputs, config.leaf_modules), copy
    copy = _copy_model(model)
    cap = capture(copy, config.leaf_modules, config.strict)
    if config.frontend is Frontend.AUTO and cap.opaque and example_inputs is not None:
        parts = ", ".join(map(repr, cap.opaque))
        del cap, copy  # one copy of the model at a time
        copy = _copy_model(model)
        try:
            exported = capture_export(copy, example_inputs, config.leaf_modules)
        except ExportError as err:
            copy = _copy_model(model)
            cap = capture(copy, config.leaf_modules, config.strict)
            cap.note = (f"torch.fx cannot trace {parts} and torch.export failed too "
                        f"({str(err).splitlines()[0]}): their layers took the module route")
            return cap, copy
        exported.note = "; ".join(filter(None, [f"torch.fx cannot trace {parts}: the whole model was captured by "
                                                "torch.export", exported.note]))
        return exported, copy
    return cap, copy  # with frontend='fx', example_inputs are not used


def _route_layers(root: nn.Module, layers: List[LayerCandidate], config: HardenConfig,
                  skipped: Dict[str, str], converted: List[str]) -> List[SiteInfo]:
    """Harden the layers of one opaque part on the module route; their report rows. The sites
    that get an ADC or DAC are appended to ``converted``."""
    qc = config.quant
    infos = []
    for c in layers:
        module = root.get_submodule(c.path)
        rule = resolve_rule(config, c.name, None, module, c.kind)
        quant = qc is not None and rule is not None and rule.quantize
        noisy = rule is not None and rule.noise
        has_weights = c.kind in _WEIGHT_KINDS
        quantize_weights = quant and qc.quantize_weights and has_weights
        weight_noise = rule is not None and has_weights and config.perturbs_weights
        if c.kind is SiteKind.RECURRENT:
            infos += _harden_recurrent(root, c.path, c.name, c.kind, quantize_weights, weight_noise, noisy, config,
                                       skipped, "module", f"inside {c.part!r}, which torch.fx cannot trace")
            continue
        qmod = noise = adc = dac = None
        qname = ""
        if quant and c.kind is SiteKind.ACTIVATION:
            qmod = _output_quant(config, c.kind, not module_unsigned(module))
            qname = str(qmod.extra_repr())
        if noisy:
            noise = _output_noise(config, c.name)
            w = getattr(module, "weight", None)
            bind_out_scale(noise, config, c.name, c.kind, (w, output_axis(module)) if w is not None else None)
            noise.owns_input = qmod is not None  # the quantizer's output is a new tensor
        if _converts(c.kind, noisy, quantize_weights):
            adc = converter(config.adc, c.name) if config.adc is not None else None
            dac = converter(config.dac, c.name) if config.dac is not None else None
            if adc is not None or dac is not None:
                converted.append(c.name)
        if quantize_weights or weight_noise:
            qname = _harden_modules(root, [(c.path, module)], quantize_weights, weight_noise, False, config, skipped,
                                    label=lambda path, c=c: c.name + path[len(c.path):]) or qname
        spatial = 0
        if adc is not None and config.adc.before_bias:  # the layer leaves its bias out; its LayerSite adds it
            layer, spatial = split_layer_bias(root.get_submodule(c.path), c.name)
            if layer is not None:
                _set_submodule(root, c.path, layer)
        if any(m is not None for m in (qmod, noise, adc, dac)):
            attach_site(root.get_submodule(c.path), LayerSite(c.name, qmod, noise, adc, dac, spatial))
        infos.append(SiteInfo(c.name, c.kind.value, type(module).__name__, qname, noisy,
                              f"inside {c.part!r}, which torch.fx cannot trace", route="module"))
    return infos


def _recurrent_layers(found: Dict[bool, List[Site]], inner: Dict[str, List[LayerCandidate]],
                      root: nn.Module) -> List[tuple]:
    """(site name, module) of the recurrent layers, graph sites and module-route layers alike."""
    return ([(s.name, s.module) for sites in found.values() for s in sites
             if s.kind is SiteKind.RECURRENT and s.module is not None]
            + [(c.name, root.get_submodule(c.path)) for layers in inner.values() for c in layers
               if c.kind is SiteKind.RECURRENT])


def _harden_recurrent(root: nn.Module, path: str, name: str, kind: SiteKind, quantize: bool, perturb: bool,
                      noisy: bool, config: HardenConfig, skipped: Dict[str, str], route: str = "graph",
                      note: str = "") -> List[SiteInfo]:
    """Swap the recurrent layer at ``path`` (site ``name``) for its hardened class, which holds
    the noise of its output (``noisy``) and of each product whose own rule (on its site name
    ``<name>.<suffix>``) gives noise; its report rows (products, then output)."""
    module = root.get_submodule(path)
    products = {s: f"{name}.{s}" for s in product_sites(module)}
    rules = {s: resolve_rule(config, p, None, module, kind) for s, p in products.items()}
    noisy_products = [s for s, rule in rules.items() if rule is not None and rule.noise]
    op = getattr(type(module), "_torch_class", type(module)).__name__
    if not (quantize or perturb or noisy or noisy_products):  # a rule of None: left alone
        return [SiteInfo(name, kind.value, op, "", False, note, route)]
    if not isinstance(module, HARDENED_LAYERS):  # else: called twice, or found again in the other mode's graph
        if not can_harden_weights(module):
            skipped[name] = f"{type(module).__name__} has its own forward; its weights are used as they are"
            return [SiteInfo(name, kind.value, op, "", False, note, route)]
        wq = WeightQuant(config.quant.w_bits, weight_axis(module)) if quantize else None
        noise = weight_noise_for(name, config, output_axis(module)) if perturb else None
        outputs = {s: _output_noise(config, products[s]) for s in noisy_products}
        output = _output_noise(config, name) if noisy else None
        for p, n in [(products[s], m) for s, m in outputs.items()] + ([(name, output)] if noisy else []):
            bind_out_scale(n, config, p, kind, None)  # refuses a model that needs a conv/linear weight
        _set_submodule(root, path, harden_recurrent(module, name, wq, noise, outputs, output))
    layer = root.get_submodule(path)
    qname = f"weights {layer.weight_quant.extra_repr()}" if layer.weight_quant is not None else ""
    rows = [SiteInfo(p, kind.value, f"{op} product", qname, s in noisy_products, note, route)
            for s, p in products.items()]
    return rows + [SiteInfo(name, kind.value, op, qname, noisy, note, route)]


def _harden_recurrent_call(root: nn.Module, site: Site, config: HardenConfig,
                           skipped: Dict[str, str]) -> List[SiteInfo]:
    """A recurrent layer on the export route: the model's own layer replaces export's holder of
    its parameters (the same tensors), is hardened, and runs in place of the layer's ATen call
    (``recurrent_export``); its report rows, or none (nothing done) when the call is not found."""
    path = site.node.meta["fxharden_layer"]
    call = recurrent_call(site.node.meta.get("fxharden_calls", []))
    if call is None:
        skipped[site.name] = _RECURRENT_EXPORT
        return []
    if not isinstance(root.get_submodule(path), (nn.RNNBase, nn.RNNCellBase)):
        _set_submodule(root, path, site.module)
    rows = _harden_recurrent(root, path, site.name, site.kind, site.quantize_weights, site.weight_noise, site.noise,
                             config, skipped, "export")
    if isinstance(root.get_submodule(path), HARDENED_LAYERS):
        call_hardened_recurrent(call, path)
    return rows


def _output_quant(config: HardenConfig, kind: SiteKind, signed: bool) -> ActQuant:
    """The quantizer of a site's output (either route): the constant step ``s`` after an
    activation under constant scaling, ``input_scale`` at an input, else from statistics
    (learned under dynamic scaling); an input's grid without ``input_scale`` is unsigned when
    the calibration data are never negative (``ActQuant`` ``sign_from_data``)."""
    qc = config.quant
    constant = kind is SiteKind.ACTIVATION and qc.scaling is Scaling.CONSTANT
    step = qc.scale if constant else (qc.input_scale if kind is SiteKind.INPUT else None)
    return ActQuant(qc.bits, signed, step=step, learn=qc.scaling is Scaling.DYNAMIC,
                    calibration_steps=qc.calibration_steps, sign_from_data=kind is SiteKind.INPUT)


def _output_noise(config: HardenConfig, site: str) -> Noise:
    """The noise module of a site's output (either route)."""
    noise = Noise(site, config.noise.seed, kind=config.noise.model,
                  keep_float32=config.noise.autocast_output is AutocastOutput.FLOAT32)
    noise.batch_dim_known = False  # located by groups.ensure_batch_dims before groups are used
    return noise


def _converts(kind: SiteKind, noisy: bool, quantize_weights: bool) -> bool:
    """Whether a site gets the configured ADC (output) and DAC (input): a conv or linear layer
    that is noisy or has quantized weights."""
    return kind in (SiteKind.CONV, SiteKind.LINEAR) and (noisy or quantize_weights)


def _harden_weights(root: nn.Module, site: Site, config: HardenConfig, skipped: Dict[str, str]) -> str:
    return _harden_modules(root, _weight_modules(site, root), site.quantize_weights, site.weight_noise,
                           site.kind is SiteKind.OTHER, config, skipped)


def _harden_modules(root: nn.Module, named: List[tuple], quantize: bool, perturb: bool, other: bool,
                    config: HardenConfig, skipped: Dict[str, str], label=lambda path: path) -> str:
    """Swap the conv/linear/embedding/attention layers among ``named`` (``(path, module)``)
    for hardened ones; ``label(path)`` names them in the report and their weight noise."""
    qc = config.quant
    desc = ""
    inside_attention: List[str] = []
    for name, module in named:
        if any(name.startswith(f"{a}.") for a in inside_attention):
            continue  # the attention layer hardens its projection weights itself
        if isinstance(module, HARDENED_LAYERS):
            continue  # hardened already (a layer called twice, or found again in the other mode's graph)
        if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear, nn.MultiheadAttention, nn.Embedding)) \
                and not can_harden_weights(module):
            skipped[label(name)] = f"{type(module).__name__} has its own forward; its weights are used as they are"
            continue
        if not can_harden_weights(module):
            if other and any(True for _ in module.parameters(recurse=False)):
                skipped[label(name)] = (f"{type(module).__name__}: only conv, linear, embedding and attention "
                                        "projection weights are quantized and perturbed; its weights are used as "
                                        "they are")
            continue
        if isinstance(module, nn.MultiheadAttention):
            inside_attention.append(name)
        wq = WeightQuant(qc.w_bits, weight_axis(module)) if quantize else None
        noise = weight_noise_for(label(name), config, output_axis(module)) if perturb else None
        _set_submodule(root, name, harden_layer(module, wq, noise))
        desc = f"weights {wq.extra_repr()}" if wq is not None else desc
    return desc


def _hardened_call(site: Site, call: fx.Node, label: str, config: HardenConfig) -> HardenedCall:
    """The module that replaces a call whose weight comes from parameters (``F.linear(x,
    self.fc.weight)``, the ``F.conv2d`` inside timm's ``StdConv2d``, the ATen calls of a layer on
    the export route); its weight noise is the site ``<label>.weight``."""
    arg = weight_arg(call.target)
    wq = WeightQuant(config.quant.w_bits, arg.axis) if site.quantize_weights else None
    noise = weight_noise_for(label, config, arg.out_axis) if site.weight_noise else None
    hardened = HardenedCall(call.target, wq, noise, arg)
    hardened.site = label
    return hardened


def harden_report(model: nn.Module) -> HardenReport:
    """The sites of a hardened model and what was left out, with reasons."""
    return check_hardened(model).report
