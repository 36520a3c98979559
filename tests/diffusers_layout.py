"""Diffusers' names and head counts for the port's attention processors, derived from diffusers' own numbering
(three ComfyUI blocks per diffusers block), so the layout tests check the port's table against an independent
rule."""


def diffusers_module(processor) -> str:
    name, number = processor.block
    if name == "middle":
        transformer = "mid_block.attentions.0"
    elif name == "input":
        transformer = f"down_blocks.{(number - 1) // 3}.attentions.{(number - 1) % 3}"
    else:
        transformer = f"up_blocks.{number // 3}.attentions.{number % 3}"
    return f"{transformer}.transformer_blocks.{processor.transformer_index}.{processor.attn}"


def heads(arch: str, processor) -> int:
    # SD1.5 has 8 heads everywhere; SDXL keeps the head size at 64.
    return 8 if arch == "sd15" else processor.hidden_size // 64
