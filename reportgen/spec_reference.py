"""The spec's reference, generated from its models: the JSON Schema
(`reportgen schema`) and the Markdown table of every key (`reportgen schema
--markdown`, which docs/guide.md embeds; a test keeps them equal).
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from reportgen.spec import Normalization, Reviewer, Spec, inner_model


def json_schema() -> str:
    schema = Spec.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "reportgen spec"
    return json.dumps(schema, indent=2, sort_keys=True)


def _type_name(annotation: Any) -> str:
    text = str(annotation).replace("typing.", "").replace("pathlib.", "")
    text = re.sub(r"Annotated\[str, AfterValidator\(func=<function \w+ at \w+>\)\]", "str",
                  text)
    text = re.sub(r"Optional\[(.*)\]$", r"\1 | None", text)
    text = text.replace("<class '", "").replace("'>", "").replace("NoneType", "None")
    for prefix in ("reportgen.spec.", "typing_extensions."):
        text = text.replace(prefix, "")
    return text.replace("Union[Literal['imagenet', 'none'], Normalization]",
                        "Literal['imagenet', 'none'] | Normalization")


def reference_markdown() -> str:
    """The spec reference table (docs/guide.md embeds it; a test keeps them equal)."""
    lines = ["| key | type | default | description |", "|---|---|---|---|"]

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, info in model.model_fields.items():
            key = f"{prefix}{info.alias or name}"
            inner = inner_model(info.annotation)
            if info.is_required():
                default = "required"
            elif info.default_factory is not None:
                made = info.default_factory()
                default = "" if isinstance(made, BaseModel) else json.dumps(made, default=str)
            else:
                default = json.dumps(info.default, default=str)
            described = _description(info).replace("|", "\\|")
            if inner is not None and inner not in (Normalization, Reviewer):
                text = " ".join((described or inner.__doc__ or "").split())  # one line
                lines.append(f"| `{key}` | section | | {text} |")
                walk(inner, key + ".")
                continue
            type_text = _type_name(info.annotation).replace("|", "\\|")
            lines.append(f"| `{key}` | `{type_text}` | {default.replace('|', '/')} | "
                         f"{described} |")

    walk(Spec, "")
    return "\n".join(lines) + "\n"


def _description(info: FieldInfo) -> str:
    """A field's description; for one whose choices come from a registry, the one its
    `json_schema_extra` writes when the reference is generated."""
    if info.description or not callable(info.json_schema_extra):
        return info.description or ""
    schema: dict[str, Any] = {}
    info.json_schema_extra(schema)
    return str(schema.get("description", ""))
