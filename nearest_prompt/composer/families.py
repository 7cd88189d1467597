"""Fragment families for the ``classic`` mode, by rules on the (normalised) fragment text.

CLIP Interrogator ranks fixed lists (artists, mediums, movements, sites, flavors); we mine the same
families from our own vocabulary with these rules, checked in this order:

* ``artist``: starts with "by ", "art by", "artwork by", "painting by", "in the style of", "style of";
* ``site``: names an art site (artstation, deviantart, cgsociety, pixiv, behance, unsplash, ...);
* ``movement``: an "-ism" word or a named movement or style (art nouveau, baroque, cyberpunk, ...);
* ``medium``: names a medium (oil painting, photograph, watercolor, 3d render, concept art, ...);
* ``flavor``: everything else (lighting, detail, mood, resolution tags).
"""

from __future__ import annotations

import re

FAMILIES = ("artist", "medium", "movement", "site", "flavor")

_ARTIST = re.compile(r"^(by|art by|artwork by|painting by|illustration by|in the style of|style of) \S")
_SITE = re.compile(r"\b(artstation|deviantart|cgsociety|pixiv|behance|unsplash|flickr|pinterest|instagram|500px|"
                   r"polycount|zbrush central|conceptartworld|tumblr|reddit)\b")
_MOVEMENT = re.compile(r"\b\w+ism\b|\b(art nouveau|art deco|baroque|renaissance|rococo|ukiyo[- ]?e|pop art|bauhaus|"
                       r"pre-raphaelite|synthwave|vaporwave|cyberpunk|steampunk|solarpunk|dieselpunk|gothic|"
                       r"romanticism|minimalist|psychedelic|retrofuturism|afrofuturism|fantasy art|hudson river school)\b")
_MEDIUM = re.compile(r"\b(painting|photograph|photo|photography|illustration|render|rendering|drawing|sketch|"
                     r"watercolou?r|digital art|concept art|3d|sculpture|pencil|ink|oil on canvas|acrylic|pastel|"
                     r"charcoal|engraving|woodcut|lithograph|pixel art|vector art|matte painting|polaroid|35mm|"
                     r"film still|anime|manga|comic|poster|miniature|tapestry|mosaic|fresco|etching|gouache|"
                     r"screenprint|cartoon|claymation|low poly|voxel)\b")


def family(fragment: str) -> str:
    """The family of one normalised fragment (see the module's rules)."""
    if _ARTIST.match(fragment):
        return "artist"
    if _SITE.search(fragment):
        return "site"
    if _MOVEMENT.search(fragment):
        return "movement"
    if _MEDIUM.search(fragment):
        return "medium"
    return "flavor"
