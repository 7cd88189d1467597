"""Fragment families for the ``classic`` mode, by rules on the (normalised) fragment text.

CLIP Interrogator ranks fixed lists (artists, mediums, movements, sites, flavors); we mine the same
families from our own vocabulary with these rules, checked in this order:

* ``artist``: names who made it: "by X", "painted by X", "photographed by X", "art by X", "in the style of X",
  "inspired by X", with at most four words before "by" (further in, "by X" belongs to a longer description),
  but not "surrounded by", "lit by" and the like, nor "by a", "by the";
* ``site``: names an art site (artstation, deviantart, cgsociety, pixiv, behance, unsplash, ...), in at most
  five words;
* ``movement``: an "-ism" word or a named movement or style (art nouveau, baroque, cyberpunk, ...), in at most
  three words;
* ``medium``: names a medium (oil painting, photograph, watercolor, 3d render, concept art, ...), in at most
  four words;
* ``flavor``: everything else (lighting, detail, mood, resolution tags, and descriptions too long to be one
  of the above).
"""

from __future__ import annotations

import re

FAMILIES = ("artist", "medium", "movement", "site", "flavor")
MAX_WORDS = {"site": 5, "movement": 3, "medium": 4}

_ARTIST = re.compile(r"^(?P<before>(?:[^\s]+ ){0,4})(?:by|in the style of|style of|inspired by) "
                     r"(?!(?:by|a|an|the|piece)\b)\S")
_NOT_AN_ARTIST = {"surrounded", "covered", "lit", "illuminated", "backlit", "guarded", "followed", "inhabited",
                  "overgrown", "powered", "flanked", "framed", "attacked", "eaten", "chased", "held", "struck", "pulled",
                  "carried", "worn"}  # "surrounded by fireflies" says nothing of who made it
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
    words = len(fragment.split())
    artist = _ARTIST.match(fragment)
    if artist and (artist["before"].split() or [""])[-1] not in _NOT_AN_ARTIST:
        return "artist"
    if words <= MAX_WORDS["site"] and _SITE.search(fragment):
        return "site"
    if words <= MAX_WORDS["movement"] and _MOVEMENT.search(fragment):
        return "movement"
    if words <= MAX_WORDS["medium"] and _MEDIUM.search(fragment):
        return "medium"
    return "flavor"
