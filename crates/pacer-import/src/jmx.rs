//! Reading a `.jmx` file into a tree of test elements.
//!
//! A JMX file is JMeter's XStream serialisation: `<jmeterTestPlan>` holds a `<hashTree>` in
//! which each test element (`<ThreadGroup testname=".." enabled="..">` with its
//! `stringProp`/`boolProp`/`intProp`/`longProp`/`elementProp`/`collectionProp` properties) is
//! followed by a `<hashTree>` of its children.
//!
//! Safe on files from anyone: the size is bounded ([`crate::MAX_JMX_BYTES`]) and so is the
//! number of nodes ([`crate::MAX_JMX_NODES`]); roxmltree refuses any DTD (`allow_dtd: false`,
//! so no entity can be declared: no "billion laughs"), has no entity resolver set, so nothing
//! external is ever fetched or read, and never evaluates anything. Errors name the element.

use crate::ImportError;

/// A property value.
#[derive(Clone, Debug, PartialEq)]
pub enum Prop {
    Text(String),
    Element(Props),
    Collection(Vec<(String, Prop)>),
}

/// An element's properties, by `name`, in document order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Props(pub Vec<(String, Prop)>);

impl Props {
    pub fn get(&self, name: &str) -> Option<&Prop> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, p)| p)
    }

    /// A text property, trimmed; `None` when absent.
    pub fn text(&self, name: &str) -> Option<&str> {
        match self.get(name) {
            Some(Prop::Text(t)) => Some(t.as_str()),
            _ => None,
        }
    }

    /// A text property, or "" when absent.
    pub fn str(&self, name: &str) -> &str {
        self.text(name).unwrap_or("")
    }

    pub fn bool(&self, name: &str) -> bool {
        self.text(name).is_some_and(|t| t.trim() == "true")
    }

    pub fn element(&self, name: &str) -> Option<&Props> {
        match self.get(name) {
            Some(Prop::Element(p)) => Some(p),
            _ => None,
        }
    }

    /// The elements of a collection property (`collectionProp` of `elementProp`s).
    pub fn elements(&self, name: &str) -> Vec<&Props> {
        match self.get(name) {
            Some(Prop::Collection(items)) => items
                .iter()
                .filter_map(|(_, p)| match p {
                    Prop::Element(e) => Some(e),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The texts of a collection property (`collectionProp` of `stringProp`s).
    pub fn texts(&self, name: &str) -> Vec<&str> {
        match self.get(name) {
            Some(Prop::Collection(items)) => items
                .iter()
                .filter_map(|(_, p)| match p {
                    Prop::Text(t) => Some(t.as_str()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// A test element and its children.
#[derive(Clone, Debug, PartialEq)]
pub struct Element {
    /// The XML tag: `ThreadGroup`, `HTTPSamplerProxy`, `HeaderManager` ...
    pub class: String,
    /// The `guiclass` attribute (tells an HTTP Request Defaults from other ConfigTestElements).
    pub gui: String,
    /// The `testname` attribute: the name the user gave it.
    pub name: String,
    pub enabled: bool,
    pub props: Props,
    pub children: Vec<Element>,
}

/// How deep elements nest at most: JMeter plans are a handful of levels deep; the bound
/// keeps the recursive walks on a hostile file from exhausting the stack.
const MAX_DEPTH: usize = 64;

/// Parse a JMX document into its test plan element.
pub fn parse(text: &str) -> Result<Element, ImportError> {
    if text.len() > crate::MAX_JMX_BYTES {
        return Err(ImportError::TooLarge {
            size: text.len(),
            max: crate::MAX_JMX_BYTES,
        });
    }
    let options = roxmltree::ParsingOptions {
        allow_dtd: false,
        nodes_limit: crate::MAX_JMX_NODES,
        entity_resolver: None,
    };
    let doc = roxmltree::Document::parse_with_options(text, options)
        .map_err(|source| ImportError::Xml { source })?;
    let root = doc.root_element();
    if root.tag_name().name() != "jmeterTestPlan" {
        return Err(ImportError::NotJmx {
            root: root.tag_name().name().to_string(),
        });
    }
    let tree = child_elements(root)
        .find(|n| n.tag_name().name() == "hashTree")
        .ok_or_else(|| missing("jmeterTestPlan", "has no <hashTree>"))?;
    let mut top = hash_tree(tree, 0)?;
    let plan_index = top
        .iter()
        .position(|e| e.class == "TestPlan")
        .ok_or_else(|| missing("jmeterTestPlan", "has no <TestPlan> element"))?;
    Ok(top.swap_remove(plan_index))
}

fn missing(element: &str, message: &str) -> ImportError {
    ImportError::Element {
        element: element.to_string(),
        message: message.to_string(),
    }
}

fn child_elements<'a, 'i>(
    n: roxmltree::Node<'a, 'i>,
) -> impl Iterator<Item = roxmltree::Node<'a, 'i>> {
    n.children().filter(|c| c.is_element())
}

/// The elements of a `<hashTree>`, each with the `<hashTree>` that follows it as children.
fn hash_tree(tree: roxmltree::Node<'_, '_>, depth: usize) -> Result<Vec<Element>, ImportError> {
    if depth > MAX_DEPTH {
        return Err(missing(
            "hashTree",
            &format!("elements nest more than {MAX_DEPTH} levels deep"),
        ));
    }
    let mut out: Vec<Element> = Vec::new();
    for node in child_elements(tree) {
        if node.tag_name().name() == "hashTree" {
            match out.last_mut() {
                Some(last) if last.children.is_empty() => {
                    last.children = hash_tree(node, depth + 1)?;
                }
                // A <hashTree> that follows no element, or a second one: JMeter ignores
                // an empty one; anything in it would belong to nothing.
                _ => {
                    if child_elements(node).next().is_some() {
                        return Err(missing(
                            "hashTree",
                            "a <hashTree> with elements follows no test element",
                        ));
                    }
                }
            }
            continue;
        }
        out.push(element(node, depth)?);
    }
    Ok(out)
}

fn element(node: roxmltree::Node<'_, '_>, depth: usize) -> Result<Element, ImportError> {
    let class = node.tag_name().name().to_string();
    Ok(Element {
        gui: node.attribute("guiclass").unwrap_or("").to_string(),
        name: node.attribute("testname").unwrap_or(&class).to_string(),
        enabled: node.attribute("enabled") != Some("false"),
        props: props(node, &class, depth)?,
        class,
        children: Vec::new(),
    })
}

fn props(node: roxmltree::Node<'_, '_>, owner: &str, depth: usize) -> Result<Props, ImportError> {
    let mut out = Vec::new();
    for child in child_elements(node) {
        if let Some(p) = prop(child, owner, depth)? {
            out.push(p);
        }
    }
    Ok(Props(out))
}

/// One property element; `None` for elements that are not properties (ignored, as JMeter's
/// reader ignores what it does not know).
fn prop(
    node: roxmltree::Node<'_, '_>,
    owner: &str,
    depth: usize,
) -> Result<Option<(String, Prop)>, ImportError> {
    if depth > MAX_DEPTH {
        return Err(missing(
            owner,
            &format!("properties nest more than {MAX_DEPTH} levels deep"),
        ));
    }
    // Most properties name themselves in an attribute; a serialised doubleProp (the
    // throughput timer's) has <name> and <value> children instead.
    let child_text = |tag: &str| {
        child_elements(node)
            .find(|c| c.tag_name().name() == tag)
            .and_then(|c| c.text())
    };
    let name = node
        .attribute("name")
        .or_else(|| child_text("name"))
        .unwrap_or("")
        .to_string();
    let value = match node.tag_name().name() {
        "doubleProp" | "floatProp" if node.attribute("name").is_none() => {
            Prop::Text(child_text("value").unwrap_or("").to_string())
        }
        "stringProp" | "boolProp" | "intProp" | "longProp" | "doubleProp" | "floatProp" => {
            Prop::Text(node.text().unwrap_or("").to_string())
        }
        "elementProp" => Prop::Element(props(node, owner, depth + 1)?),
        "collectionProp" => {
            let mut items = Vec::new();
            for c in child_elements(node) {
                if let Some(p) = prop(c, owner, depth + 1)? {
                    items.push(p);
                }
            }
            Prop::Collection(items)
        }
        _ => return Ok(None),
    };
    Ok(Some((name, value)))
}
